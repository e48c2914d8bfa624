"""Taylor (first order): every conv/linear/BN/LayerNorm member of a group contributes, per
channel, sum_i |w_i * g_i| over its weights in that channel's row (``multivariable``:
|sum_i w_i * g_i|), g the mean-loss gradient on the calibration set; BN contributes
|gamma * g_gamma|. With ``bias`` every member's bias (BN: beta) adds |b * g_b| as its own
part. Mean reduction over parts, mean normalization: Torch-Pruning's GroupTaylorImportance,
except that BatchNorm is scored (``score_bn``; TP 1.6.1 tests the BN branch against the
GroupNorm handler, so BN members never count)."""

from specs.sdk import PARAM_KINDS, ImportanceMethod, counted, member_keys, member_rows, normalize, reduce_to_root


class Method(ImportanceMethod):
    def score_group(self, group, obs):
        kinds = PARAM_KINDS if self.hp["score_bn"] else tuple(k for k in PARAM_KINDS if k != "bn")
        parts = []
        for m in group.members:
            if not counted(m, kinds, self.hp["depthwise"]):
                continue
            for key in member_keys(m, self.hp["bias"]):
                wg = member_rows(m, obs.weights[key] * obs.gradients[key])
                parts.append((m, wg.sum(1).abs() if self.hp["multivariable"] else wg.abs().sum(1)))
        return normalize(reduce_to_root(group, parts, self.hp["reduction"]), self.hp["normalizer"])
