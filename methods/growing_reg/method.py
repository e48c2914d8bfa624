"""Growing regularization (Wang et al., ICLR 2021), as Torch-Pruning 1.6.1's GrowingRegPruner
but with a working BatchNorm term: every root channel c has an L2 penalty lambda_c, starting at
``reg``; every ``update_interval`` steps it grows by ``delta_reg * (max s - s_c) / (max s - min s)``
(s = the group's squared L2 norms, so the least important channel grows fastest), up to
``reg_ceiling``; each step every conv/linear/BN weight slice of c gets ``grad += lambda_c * w``."""

import torch

from specs.sdk import RegularizerMethod, group_sq_norms, scale_members


class Method(RegularizerMethod):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.penalty: dict[str, torch.Tensor] = {}
        self.last_step = 0

    def _grow(self, groups, weights):
        for g in groups:
            s = group_sq_norms(g, weights, depthwise=self.hp["depthwise"])
            s = s / s.mean()  # Torch-Pruning's default importance normalizer (keeps its 1e-8 in scale)
            if torch.isnan(s).any():
                continue
            unimportance = (s.max() - s) / (s.max() - s.min() + 1e-8)  # in [0, 1]
            self.penalty[g.id] = (self.penalty[g.id] + self.hp["delta_reg"] * unimportance).clamp_max(
                self.hp["reg_ceiling"])

    def regularize_compact(self, step, total_steps, groups, weights):
        fresh = {g.id: g.n_channels for g in groups} != {k: len(v) for k, v in self.penalty.items()}
        if step == 0 or fresh:  # a new sparse-training run (or other groups): start over
            self.penalty = {g.id: torch.full((g.n_channels,), self.hp["reg"]) for g in groups}
            self.last_step = step
        interval = self.hp["update_interval"]
        for _ in range(step // interval - self.last_step // interval):  # one growth per interval crossed
            self._grow(groups, weights)
        self.last_step = step
        return scale_members(groups, self.penalty, weights, bias=self.hp["bias"], depthwise=self.hp["depthwise"])
