"""Network slimming's sparsity training (Liu et al., ICCV 2017): an L1 penalty on every
BatchNorm scale gamma, i.e. ``grad += reg * sign(gamma)`` (Torch-Pruning's
``BNScalePruner.regularize`` with ``group_lasso=False``)."""

import torch

from specs.sdk import RegularizerMethod


class Method(RegularizerMethod):
    def regularize(self, step, total_steps, groups, weights):
        # each BN once, whole tensor, even if it is split over several groups
        keys = sorted({m.weight for g in groups for m in g.members if m.kind == "bn" and m.weight})
        return {k: self.hp["reg"] * torch.sign(weights[k]) for k in keys}
