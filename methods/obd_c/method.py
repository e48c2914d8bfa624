"""OBD-C: Optimal Brain Damage of whole channels under the K-FAC Fisher, i.e. OBD in the
Kronecker-factored eigenbasis (EigenDamage, Wang et al., ICML 2019).

Per conv/linear member, K-FAC approximates the Fisher block as ``A (x) G`` with
``A = E[a a^T]`` (``a`` = the ``inputs`` row, plus a 1 for a bias) and ``G = E[g g^T]`` (``g`` =
the ``output_gradients`` row, labels sampled from the model, scaled so that the conv factor T
is inside G). In the eigenbasis ``A = U_A diag(l_A) U_A^T``, ``G = U_G diag(l_G) U_G^T`` the
Fisher is diagonal, ``l_G[i] * l_A[j]``, and removing a channel - setting the weights ``dW``
that belong to it to zero - costs ``0.5 * sum_ij l_G[i] l_A[j] (U_G^T dW U_A)_ij^2``
= ``0.5 * vec(dW)^T (G (x) A) vec(dW)``. That has closed forms, used here (exactly equal; the
test checks them against the eigenbasis sum):

- output channel o (a row of W, with its bias): ``0.5 * G[o, o] * w_o^T A w_o``
  = ``0.5 * E[g_o^2] * E[s_o^2]`` with ``s_o = a . w_o + b_o`` the layer's output;
- input channel c (its K columns of every row): ``0.5 * sum_(k,l) A[ck, cl] (W_ck^T G W_cl)``.

Member saliencies are summed per channel (K-FAC's Fisher is block-diagonal across layers),
then normalized per group.
"""

import torch

from specs.sdk import ImportanceMethod, dense_weight, normalize, reduce_to_root


def out_saliency(member, a: torch.Tensor, g: torch.Tensor, w: torch.Tensor, b) -> torch.Tensor:
    """``[C_out]``: ``0.5 * G[o, o] * E[(a . w_o + b_o)^2]`` (the bias is removed with its channel)."""
    a = (a if a.dim() == 3 else a.unsqueeze(2)).double()
    s = torch.einsum("rck,ock->ro", a, dense_weight(member, w.double()))  # the layer's output at the rows
    if b is not None:
        s = s + b.double()
    return 0.5 * g.double().pow(2).mean(0) * s.pow(2).mean(0)


def in_saliency(member, a: torch.Tensor, g: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """``[C_in]``: ``0.5 * sum_(k,l) A_c[k, l] * (W_c^T G W_c)[k, l]`` per input channel c."""
    a = (a if a.dim() == 3 else a.unsqueeze(2)).double()
    g = g.double()
    wd = dense_weight(member, w.double())  # [O, C, K]
    rows = a.shape[0]
    a_blocks = torch.einsum("rck,rcl->ckl", a, a) / rows
    G = g.T @ g / rows
    m_blocks = torch.einsum("ock,ocl->ckl", wd, torch.einsum("op,pck->ock", G, wd))
    return 0.5 * (a_blocks * m_blocks).sum((1, 2))


class Method(ImportanceMethod):
    def score_group(self, group, obs):
        use = {"all": ("out", "in"), "out": ("out",), "in": ("in",)}[self.hp["members"]]
        parts = []
        for m in group.members:
            if (m.kind not in ("conv", "linear") or m.transposed or not m.weight or m.dim not in use
                    or m.layer not in obs.inputs or m.layer not in obs.output_gradients):
                continue
            a, g, w = obs.inputs[m.layer], obs.output_gradients[m.layer], obs.weights[m.weight]
            if m.dim == "out":
                sal = out_saliency(m, a, g, w, obs.weights[m.bias] if m.bias else None)
            else:
                sal = in_saliency(m, a, g, w)
            parts.append((m, sal[torch.as_tensor(m.idxs, dtype=torch.long)]))
        scores = reduce_to_root(group, parts, self.hp["reduction"])
        if not parts or not scores.any():
            return scores
        return normalize(scores, self.hp["normalizer"])
