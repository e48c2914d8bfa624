"""LAMP: group magnitude |w|^p per channel, then each channel's score divided by the sum of
the scores of every channel of its group that is at least as large (Torch-Pruning's
LAMPImportance: p=2, mean reduction over conv/linear/norm members, 'lamp' normalizer)."""

from specs.sdk import PARAM_KINDS, ImportanceMethod, counted, member_rows, normalize, reduce_to_root


class Method(ImportanceMethod):
    def score_group(self, group, obs):
        p = self.hp["p"]
        parts = [(m, member_rows(m, obs.weights[m.weight]).abs().pow(p).sum(1))
                 for m in group.members if counted(m, PARAM_KINDS, self.hp["depthwise"]) and m.weight]
        return normalize(reduce_to_root(group, parts, self.hp["reduction"]), "lamp")
