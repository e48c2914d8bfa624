"""BNScale (network slimming): a channel's importance is |gamma| of every affine BatchNorm
coupled to it, mean over those BNs, mean-normalized per group (Torch-Pruning's
BNScaleImportance). A group without an affine BN has no scaling factor to rank by:
Torch-Pruning skips such groups, so here they score the highest value of the round and
are pruned last."""

import torch

from specs.sdk import ImportanceMethod, member_rows, normalize, reduce_to_root


class Method(ImportanceMethod):
    def score(self, groups, obs):
        scores = {g.id: self.score_group(g, obs) for g in groups}
        top = max((float(s.max()) for s in scores.values() if s is not None), default=1.0)
        return {g.id: torch.full((g.n_channels,), top) if scores[g.id] is None else scores[g.id] for g in groups}

    def score_group(self, group, obs):
        parts = [(m, member_rows(m, obs.weights[m.weight]).abs().squeeze(1))
                 for m in group.members if m.kind == "bn" and m.weight]
        if not parts:
            return None
        return normalize(reduce_to_root(group, parts, self.hp["reduction"]), self.hp["normalizer"])
