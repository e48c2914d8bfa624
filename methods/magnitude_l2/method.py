"""Group magnitude importance: sum over coupled layers of |w|^p per channel (Torch-Pruning's
MagnitudeImportance: mean reduction over members, mean normalization per group)."""

from specs.sdk import PARAM_KINDS, ImportanceMethod, counted, member_rows, normalize, reduce_to_root


class Method(ImportanceMethod):
    def score_group(self, group, obs):
        p = self.hp["p"]
        parts = [(m, member_rows(m, obs.weights[m.weight]).abs().pow(p).sum(1))
                 for m in group.members if counted(m, PARAM_KINDS, self.hp["depthwise"]) and m.weight]
        return normalize(reduce_to_root(group, parts, self.hp["reduction"]), self.hp["normalizer"])
