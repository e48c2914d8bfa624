"""OBD with a diagonal empirical-Fisher Hessian: H_ii = sum over calibration samples of the
squared per-sample gradient (the ``sq_gradients`` observation); a member's score for a
channel is sum_i 0.5 * H_ii * w_i^2 over that channel's weights (BN/LayerNorm: its gamma).
Mean reduction over conv/linear/norm members, mean normalization, as Torch-Pruning's
GroupHessianImportance - which, in 1.6.1, keeps only the last sample's squared gradient."""

from specs.sdk import PARAM_KINDS, ImportanceMethod, counted, member_keys, member_rows, normalize, reduce_to_root


class Method(ImportanceMethod):
    def score_group(self, group, obs):
        parts = []
        for m in group.members:
            if not counted(m, PARAM_KINDS, self.hp["depthwise"]):
                continue
            for key in member_keys(m, self.hp["bias"]):
                saliency = 0.5 * obs.sq_gradients[key] * obs.weights[key].pow(2)
                parts.append((m, member_rows(m, saliency).sum(1)))
        return normalize(reduce_to_root(group, parts, self.hp["reduction"]), self.hp["normalizer"])
