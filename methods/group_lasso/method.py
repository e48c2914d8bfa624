"""Group lasso over coupled channels (Yuan & Lin 2006; channel-wise in Wen et al. 2016):
penalty ``reg * sum_c ||theta_c||_2`` where ``theta_c`` is every weight slice coupled to root
channel c across the group's members, so ``grad += reg * w / ||theta_c||`` on each slice."""

from specs.sdk import PARAM_KINDS, RegularizerMethod, group_sq_norms, scale_members

EPS = 1e-9  # as Torch-Pruning: keeps a dead channel's coefficient finite


class Method(RegularizerMethod):
    def regularize_compact(self, step, total_steps, groups, weights):
        kinds = ("bn",) if self.hp["members"] == "bn" else PARAM_KINDS
        bias = self.hp["bias"]
        dw = self.hp["depthwise"]
        coefs = {g.id: self.hp["reg"] / (group_sq_norms(g, weights, kinds, bias, self.hp["reduction"], dw) + EPS).sqrt()
                 for g in groups}
        return scale_members(groups, coefs, weights, kinds=kinds, bias=bias, depthwise=dw)
