"""FPGM: for every conv/linear member of a group, the rows of |w|^p (one per pruned index)
are compared pairwise; a channel's member score is the sum of its Euclidean distances to
all other channels of that member. Channels near the geometric median (small sums) are the
most replaceable. Mean reduction over members, mean normalization (Torch-Pruning's
FPGMImportance; norm layers carry no filter and are skipped, as there)."""

import torch

from specs.sdk import ImportanceMethod, counted, member_rows, normalize, reduce_to_root


def distance_sums(rows: torch.Tensor) -> torch.Tensor:
    """``[n, k] -> [n]``: sum over j of ||rows[i] - rows[j]||_2 (the same torch.cdist call as
    Torch-Pruning, so that rounding agrees too)."""
    return torch.cdist(rows.unsqueeze(0), rows.unsqueeze(0), p=2).squeeze(0).abs().sum(0)


class Method(ImportanceMethod):
    def score_group(self, group, obs):
        p = self.hp["p"]
        parts = [(m, distance_sums(member_rows(m, obs.weights[m.weight]).abs().pow(p)))
                 for m in group.members if counted(m, ("conv", "linear"), self.hp["depthwise"]) and m.weight]
        return normalize(reduce_to_root(group, parts, self.hp["reduction"]), self.hp["normalizer"])
