"""DepGraph's group-norm sparsity (Fang et al., CVPR 2023), as Torch-Pruning 1.6.1's
``GroupNormPruner.regularize``: per root channel c, the group norm ``n_c`` (L2 over every
conv/linear/BN/LayerNorm slice coupled to c); ``gamma_c = 2^alpha ^ ((max n - n_c) / (max n - min n))``
(1 for the strongest channel, 2^alpha for the weakest); every conv/linear/BN weight slice of c
gets ``grad += reg * gamma_c * w``."""

import torch

from specs.sdk import RegularizerMethod, group_sq_norms, scale_members


class Method(RegularizerMethod):
    def regularize_compact(self, step, total_steps, groups, weights):
        base = 2.0 ** self.hp["alpha"]
        coefs = {}
        for g in groups:
            norm = group_sq_norms(g, weights, depthwise=self.hp["depthwise"]).sqrt()  # biases never count (as TP)
            if torch.isnan(norm).any():
                continue  # Torch-Pruning skips such a group too
            spread = norm.max() - norm.min()
            if spread <= 0:
                coefs[g.id] = torch.full_like(norm, self.hp["reg"])  # all channels alike: gamma = 1
                continue
            coefs[g.id] = self.hp["reg"] * base ** ((norm.max() - norm) / spread)
        return scale_members(groups, coefs, weights, bias=self.hp["bias"], depthwise=self.hp["depthwise"])
