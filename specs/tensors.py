"""What the messages' tensors mean, for both sides (needs torch; never imports the harness).

The harness (the runtime) and the method SDK (:mod:`specs.sdk`, the authors' helpers) both read and write
these conventions, so they live in the contract and each side imports them from here:

- :data:`Tensors`: named tensors (parameter keys, layer names or group ids -> tensor);
- which dimension of a member's weight its ``idxs`` index (:func:`member_dim`), and when its channel
  slices are blocks of a grouped conv rather than hyperplanes (:func:`grouped`);
- the compact regularizer answer of spec 1.1 (:class:`~specs.messages.RegularizeReply`): scales keyed
  ``"<param key>@<dim>"`` (:func:`split_scale_key`, :func:`split_compact`), each broadcast along its
  dimension (:func:`broadcast_scale`);
- :func:`seed_everything`: how ``Hello.seed`` seeds a process.

:mod:`specs.sdk` re-exports every name here: method authors keep importing them from ``specs.sdk``.
"""

from __future__ import annotations

import random
from typing import Optional

import torch

from specs.messages import Member

#: named tensors: parameter keys, layer names or group ids -> tensor
Tensors = dict[str, torch.Tensor]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
    try:
        import numpy as np
        np.random.seed(seed % (2**32))
    except ImportError:  # pragma: no cover - numpy ships with torch images
        pass


def grouped(member: Member) -> bool:
    """Whether the member's channel slices are blocks of a grouped conv rather than whole hyperplanes:
    a grouped (``1 < groups``), not depthwise conv read along its inputs, or a transposed one along its
    outputs. Input channel ``c`` of a ``groups=g`` conv with ``w = C_in / g`` inputs per group feeds
    only group ``j = c // w``'s ``C_out / g`` outputs, at column ``c % w`` of the weight - channels
    ``c`` and ``c + w`` share the column, not the rows."""
    return (member.kind == "conv" and member.conv_groups > 1 and not member.depthwise
            and (member.dim == "in") != member.transposed)


def member_dim(member: Member, tensor: torch.Tensor) -> int:
    """The dimension of ``tensor`` (the member's weight or bias) that ``member.idxs`` index."""
    if tensor.dim() == 1 or member.depthwise:  # a depthwise conv's inputs are its outputs: filters [C, 1, K]
        return 0
    if member.dim == "out":
        return 1 if member.transposed else 0
    return 0 if member.transposed else 1


def split_scale_key(name: str) -> tuple[str, Optional[int]]:
    """``"layer.weight@1"`` -> ``("layer.weight", 1)``; a plain parameter key -> ``(key, None)``."""
    key, sep, dim = name.rpartition("@")
    if sep and dim.isdigit():
        return key, int(dim)
    return name, None


def broadcast_scale(scale: torch.Tensor, ndim: int, dim: int) -> torch.Tensor:
    """``scale`` (1-D) shaped to broadcast along dimension ``dim`` of an ``ndim``-dimensional tensor."""
    shape = [1] * ndim
    shape[dim] = -1
    return scale.reshape(shape)


def split_compact(out: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """A compact answer as ``(dense gradients, scales)``."""
    dense, scales = {}, {}
    for name, t in out.items():
        (dense if split_scale_key(name)[1] is None else scales)[name] = t
    return dense, scales
