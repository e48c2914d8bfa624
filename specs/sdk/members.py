"""Tensor helpers for method authors: a group member's rows of a tensor, reductions to the group's
root channels, normalizers, and (for regularizers) per-channel norms and compact scales.

Everything here takes the spec's :class:`~specs.messages.Group`/:class:`~specs.messages.Member`
descriptions and plain tensors; nothing imports the harness. What the harness reads the same way
(:func:`grouped`, :func:`member_dim`, the compact scales' keys) lives in the contract,
:mod:`specs.tensors`, and is re-exported here.
"""

from __future__ import annotations

from typing import Iterable, Optional

import torch

from specs.messages import Group, Member
from specs.tensors import broadcast_scale, grouped, member_dim, split_scale_key

#: the layer kinds Torch-Pruning's magnitude-style importances look at
PARAM_KINDS = ("conv", "linear", "bn", "layernorm")


def _blocks(member: Member, tensor: torch.Tensor):
    """``(blocks [g, rows per group, w, K], j, l)``: a grouped member's weight split by conv group, and
    each index's group ``j`` and column ``l`` (see :func:`grouped`)."""
    g, w = member.conv_groups, tensor.shape[1]
    idxs = torch.as_tensor(member.idxs, dtype=torch.long)
    return tensor.reshape(g, tensor.shape[0] // g, w, -1), idxs // w, idxs % w


def member_rows(member: Member, tensor: torch.Tensor) -> torch.Tensor:
    """The weights of each channel's slice in a weight-shaped ``tensor`` (weight, gradient, ...).

    Returns ``[len(member.idxs), k]``: row i holds exactly the entries that are removed with index
    ``member.idxs[i]``: conv/linear outputs ``W[idxs].flatten(1)``; inputs ``W.transpose(0, 1)[idxs]``;
    norm layers and biases ``W[idxs]`` as a column; a depthwise conv's filter of that channel. For a
    grouped conv's inputs (:func:`grouped`) only the outputs of the channel's own conv group:
    ``k = C_out / groups * K``. (Torch-Pruning 1.6.1 instead repeats the whole column ``c % w`` for every
    group, so channels ``c`` and ``c + w`` share each other's weights.)
    """
    if grouped(member) and tensor.dim() > 1:
        blocks, j, l = _blocks(member, tensor)
        return blocks[j, :, l].flatten(1)
    rows = tensor.movedim(member_dim(member, tensor), 0) if tensor.dim() > 1 else tensor.unsqueeze(1)
    out = _select(rows, member.idxs).flatten(1).contiguous()
    # a tensor of its own, as the gathered copy was: a method may change it in place
    return out.clone() if out.untyped_storage().data_ptr() == tensor.untyped_storage().data_ptr() else out


def _select(rows: torch.Tensor, idxs: list[int]) -> torch.Tensor:
    """``rows[idxs]``; a run of consecutive indices (most members: a whole layer) as a slice, not a gathered
    copy (copying a slice is several times cheaper than gathering it): the same values, laid out the same once
    contiguous, so every sum over them is the same to the bit."""
    if idxs and idxs[0] >= 0 and idxs[-1] - idxs[0] == len(idxs) - 1 and idxs == list(range(idxs[0], idxs[-1] + 1)):
        return rows[idxs[0]:idxs[-1] + 1]
    return rows[torch.as_tensor(idxs, dtype=torch.long)]


def member_coefficients(member: Member, tensor: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """The adjoint of :func:`member_rows`: a tensor shaped like ``tensor`` in which every entry of index
    i's slice holds ``values[i]`` (``[len(member.idxs)]``; entries shared by several slices, their sum).
    ``coefficients * weight`` is then a gradient that scales each channel's slice by its value."""
    values = torch.as_tensor(values, dtype=torch.float32)
    if grouped(member) and tensor.dim() > 1:
        blocks, j, l = _blocks(member, tensor)
        g, rows, w, _ = blocks.shape
        per_block = torch.zeros(g, w, dtype=torch.float32).index_put_((j, l), values, accumulate=True)
        coef = per_block[:, None, :].expand(g, rows, w).reshape(g * rows, w)
        return coef.reshape(g * rows, w, *[1] * (tensor.dim() - 2)).expand(tensor.shape).clone()
    d = member_dim(member, tensor)
    scale = torch.zeros(tensor.shape[d], dtype=torch.float32).index_add_(0, member_positions(member, tensor), values)
    return broadcast_scale(scale, tensor.dim(), d).expand(tensor.shape).clone()


def counted(member: Member, kinds: Iterable[str], depthwise: bool = True) -> bool:
    """Whether ``member`` takes part in a magnitude-style sum over ``kinds``. ``depthwise=False`` leaves
    depthwise convs out, as Torch-Pruning 1.6.1's importances and regularizers do (its depthwise pruning
    handler is not among those they test for). By default they count: a depthwise filter is removed
    with its channel, like every other coupled slice."""
    return member.kind in tuple(kinds) and (depthwise or not member.depthwise)


def dense_weight(member, w: torch.Tensor) -> torch.Tensor:
    """``[C_out, C_in, K]``: a conv/linear weight with grouped-conv blocks expanded (zeros outside)."""
    w = w.flatten(2) if w.dim() > 2 else w.unsqueeze(2)
    groups = member.conv_groups if member.kind == "conv" else 1
    if groups == 1:
        return w
    c_out, c_g, k = w.shape
    o_g = c_out // groups
    dense = w.new_zeros(c_out, c_g * groups, k)
    for j in range(groups):
        dense[j * o_g:(j + 1) * o_g, j * c_g:(j + 1) * c_g] = w[j * o_g:(j + 1) * o_g]
    return dense


def contribution_gram(member, x: torch.Tensor, w: torch.Tensor):
    """``(Q, roots)``: ``Q[i, j] = sum over rows and output channels of z_i * z_j`` (float64), where
    ``z_i`` is the summed contribution of the consumer's inputs that belong to root channel ``roots[i]``.

    With X = rows x (C*K) patches and W = C_out x (C*K): ``sum_(r,o) z_rc z_rd =
    sum_(k,l) (X^T X)[ck, dl] * (W^T W)[ck, dl]``, so nothing of size rows x C_out x C is built.
    """
    idxs = torch.as_tensor(member.idxs, dtype=torch.long)
    x = (x if x.dim() == 3 else x.unsqueeze(2))[:, idxs].float()
    w = dense_weight(member, w)[:, idxs].float()
    rows, c, k = x.shape
    xx, ww = x.reshape(rows, c * k), w.reshape(w.shape[0], c * k)
    q = ((xx.T @ xx) * (ww.T @ ww)).reshape(c, k, c, k).sum((1, 3)).double()
    root = torch.as_tensor(member.root_idxs, dtype=torch.long)
    roots, inverse = root.unique(return_inverse=True)
    agg = torch.zeros(len(roots), c, dtype=torch.float64).index_add_(0, inverse, q)
    q = torch.zeros(len(roots), len(roots), dtype=torch.float64).index_add_(1, inverse, agg)
    return q, roots


def input_consumers(group: Group, inputs) -> list[Member]:
    """The conv/linear members that read the group's channels as inputs (not transposed, with a
    weight) and whose layer inputs were observed (``inputs``: the ``inputs`` observation)."""
    return [m for m in group.members
            if m.dim == "in" and m.kind in ("conv", "linear") and not m.transposed and m.weight
            and m.layer in inputs]


def root_filter_norms(group: Group, weights: dict[str, torch.Tensor]) -> Optional[torch.Tensor]:
    """``[n_channels]``: the L2 norm of each root channel's filter in the group's root layer
    (zero for channels it does not index), or None when the root has no weight."""
    root = next((m for m in group.members if m.layer == group.root and m.dim == "out" and m.weight), None)
    if root is None:
        return None
    norms = torch.zeros(group.n_channels)
    w = weights[root.weight]
    norms[torch.as_tensor(root.root_idxs)] = w[torch.as_tensor(root.idxs)].flatten(1).norm(dim=1).float()
    return norms


def reduce_to_root(group: Group, parts: Iterable[tuple[Member, torch.Tensor]], reduction: str = "mean") -> torch.Tensor:
    """Combine per-member scores (each ``[len(member.idxs)]``) into ``[group.n_channels]``.

    ``sum``/``mean`` accumulate by root channel (mean divides by the number of
    contributing members), ``max`` keeps the largest, ``first`` keeps the root's.
    """
    parts = list(parts)
    out = torch.zeros(group.n_channels, dtype=torch.float32)
    if reduction == "max":
        out.fill_(-float("inf"))
    for i, (member, imp) in enumerate(parts):
        root = torch.as_tensor(member.root_idxs, dtype=torch.long)
        imp = imp.to(torch.float32)
        if reduction in ("sum", "mean"):
            out.scatter_add_(0, root, imp)
        elif reduction == "max":
            out.scatter_reduce_(0, root, imp, reduce="amax")
        elif reduction == "first":
            if i == 0:
                out.scatter_(0, root, imp)
        else:
            raise ValueError(f"unknown reduction {reduction!r}")
    if reduction == "mean" and parts:
        out /= len(parts)
    return out


def normalize(scores: torch.Tensor, how: Optional[str]) -> torch.Tensor:
    """Per-group normalization, as Torch-Pruning's importances do before global ranking.

    Unlike Torch-Pruning, a group whose scores are all zero stays all zero (instead of 0/0 = NaN,
    which the harness would reject): its channels are the least important under any normalizer.
    """
    if how in (None, "none"):
        return scores
    if how in ("mean", "sum", "max"):
        denom = {"mean": scores.mean, "sum": scores.sum, "max": scores.max}[how]()
        return scores / denom if denom != 0 else scores
    if how == "standardization":
        return (scores - scores.min()) / (scores.max() - scores.min() + 1e-8)
    if how == "gaussian":
        return (scores - scores.mean()) / (scores.std() + 1e-8)
    if how == "lamp":  # each score over the sum of itself and the larger ones, summed from the top (as
        # Torch-Pruning: subtracting from the total instead loses the small scores' digits)
        sorted_scores, order = scores.sort(descending=True)
        out = torch.empty_like(scores)
        out[order] = sorted_scores / sorted_scores.cumsum(0).clamp_min(torch.finfo(scores.dtype).tiny)
        return out
    raise ValueError(f"unknown normalizer {how!r}")


# --------------------------------------------------------------------------- helpers for regularizers


def member_positions(member: Member, tensor: torch.Tensor) -> torch.Tensor:
    """Positions along :func:`member_dim` of ``member.idxs``: each index's slice is the whole hyperplane
    ``tensor.select(member_dim, position)``. Not for a grouped conv's channels (:func:`grouped`), whose
    slices are blocks: use :func:`member_rows` / :func:`member_coefficients` (raises ValueError)."""
    if grouped(member) and tensor.dim() > 1:
        raise ValueError(f"member {member.layer}: a grouped conv's channel slices are not hyperplanes "
                         f"(groups={member.conv_groups}); use member_rows or member_coefficients")
    return torch.as_tensor(member.idxs, dtype=torch.long)


def channel_sq_norms(member: Member, tensor: torch.Tensor) -> torch.Tensor:
    """``member_rows(member, tensor).pow(2).sum(1)`` (one value per entry of ``idxs``), computed by
    reducing the other dimensions instead of copying rows out (grouped convs: from the rows)."""
    if grouped(member) and tensor.dim() > 1:
        return member_rows(member, tensor.float()).pow(2).sum(1)
    sq = tensor.float().pow(2)
    if sq.dim() > 1:
        d = member_dim(member, tensor)
        sq = sq.sum(dim=[i for i in range(sq.dim()) if i != d])
    return sq[member_positions(member, tensor)]


def member_keys(member: Member, bias: bool) -> list[str]:
    """The member's parameter keys: its weight, and its bias if ``bias`` and the member is pruned along
    its outputs (a bias follows its layer's outputs only; input pruning does not touch it, as in
    Torch-Pruning)."""
    keys = [member.weight] if member.weight else []
    if bias and member.bias and member.dim == "out":
        keys.append(member.bias)
    return keys


def group_sq_norms(group: Group, weights: dict[str, torch.Tensor], kinds: Iterable[str] = PARAM_KINDS,
                   bias: bool = False, reduction: str = "mean", depthwise: bool = True) -> torch.Tensor:
    """Squared L2 norm of each root channel over the members of ``kinds``: ``[n_channels]``.

    ``reduction="sum"`` is the norm of the whole coupled slice; ``"mean"`` divides by the
    number of contributing tensors, as Torch-Pruning's ``GroupMagnitudeImportance(p=2)``.
    ``depthwise``: see :func:`counted`.
    """
    parts = [(m, channel_sq_norms(m, weights[k])) for m in group.members if counted(m, kinds, depthwise)
             for k in member_keys(m, bias)]
    return reduce_to_root(group, parts, reduction)


def scale_members(groups: Iterable[Group], coefs: dict[str, torch.Tensor], weights: dict[str, torch.Tensor],
                  kinds: Iterable[str] = ("conv", "linear", "bn"), bias: bool = False,
                  depthwise: bool = True) -> dict[str, torch.Tensor]:
    """Per-channel coefficients ``coefs[group.id]`` (``[n_channels]``) -> a compact answer.

    For every member of ``kinds`` (``depthwise``: see :func:`counted`), root channel ``c``'s coefficient
    multiplies the member's slice for ``c``: ``grad[slice] += coefs[c] * weight[slice]`` (with ``bias``,
    also the bias of members pruned along their outputs). Contributions of several groups add up.
    Returns ``{"<param_key>@<dim>": [weight.shape[dim]]}`` scales for :meth:`RegularizerMethod.regularize_compact`,
    and for grouped convs' channels (:func:`grouped`, whose slices are blocks, not hyperplanes) dense
    gradients ``{"<param_key>": weight-shaped}``.
    """
    out: dict[str, torch.Tensor] = {}
    for group in groups:
        if group.id not in coefs:
            continue
        c = torch.as_tensor(coefs[group.id], dtype=torch.float32)
        if c.shape != (group.n_channels,):
            raise ValueError(f"group {group.id!r}: expected {group.n_channels} coefficients, got {tuple(c.shape)}")
        for m in group.members:
            if not counted(m, kinds, depthwise):
                continue
            root = torch.as_tensor(m.root_idxs, dtype=torch.long)
            for key in member_keys(m, bias):
                w = weights[key]
                if grouped(m) and w.dim() > 1:
                    term = member_coefficients(m, w, c[root]) * w.float()
                    out[key] = out[key] + term if key in out else term
                    continue
                d = member_dim(m, w)
                s = out.setdefault(f"{key}@{d}", torch.zeros(w.shape[d], dtype=torch.float32))
                s.index_add_(0, member_positions(m, w), c[root])
    return out


def expand_compact(weights: dict[str, torch.Tensor], out: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The dense form of a compact answer: ``{param_key: gradient}`` (what a 1.0 harness expects)."""
    if not isinstance(out, dict):
        return out
    dense: dict[str, torch.Tensor] = {}
    for name, t in out.items():
        key, dim = split_scale_key(name)
        t = torch.as_tensor(t, dtype=torch.float32)
        if dim is not None:
            w = weights[key]
            if not 0 <= dim < w.dim() or t.shape != (w.shape[dim],):
                raise ValueError(f"scale {name!r}: expected {w.shape[dim] if dim < w.dim() else '?'} entries "
                                 f"for dimension {dim} of {key!r} {tuple(w.shape)}, got {tuple(t.shape)}")
            t = broadcast_scale(t, w.dim(), dim) * w
        dense[key] = dense[key] + t if key in dense else t.clone()
    return dense
