"""Patch merging (Swin's downsampling between stages: transformers' Swin and Swin V2, timm's Swin) and how to
prune it.

A patch merging concatenates each 2x2 neighbourhood's four tokens along the channels (``[C] * 4``), then
normalizes and reduces them with ``reduction``, a ``Linear(4C, C')`` (transformers' Swin V2 normalizes after
the reduction instead). Torch-Pruning maps neither transformers' concatenation (it is on the last dim) nor the
strided slices before it (it reads a slice of dim 1 of a 4-d tensor as a channel slice), nor timm's flatten
of ``[..., 2, 2, C]``; so, as in Torch-Pruning's ``examples/transformers/prune_hf_swin.py``, the module is one
customized layer (:class:`PatchMergingPruner`): a removed input channel ``c`` removes ``c``, ``c + C``,
``c + 2C`` and ``c + 3C`` of the LayerNorm and of the reduction's inputs; its outputs are the reduction's (and
Swin V2's LayerNorm after it). transformers' modules are traced with an equivalent forward
(:func:`merging_forward`: the same interleave by view and permute, which Torch-Pruning reads as
channel-preserving), swapped in for the trace only. Methods see the module as a member without a weight of its
own: it is pruned with its group, not scored.
"""

from __future__ import annotations

import contextlib
import types

import torch
import timm  # noqa: F401  (before Torch-Pruning: see harness.protocol.grouping)
import torch_pruning as tp
from torch import nn

from harness.protocol.grouping import PruneConfig


def _merging(module: nn.Module) -> str | None:
    """``"before"`` / ``"after"``: a patch-merging module (a ``*PatchMerging`` class) whose LayerNorm comes before
    (Swin) or after (transformers' Swin V2) its ``reduction`` (``Linear(4C, C')``); None for any other module."""
    reduction, norm = getattr(module, "reduction", None), getattr(module, "norm", None)
    if not (isinstance(reduction, nn.Linear) and isinstance(norm, nn.LayerNorm) and reduction.in_features % 4 == 0
            and type(module).__name__.endswith("PatchMerging")):
        return None
    width = norm.normalized_shape[0]
    return "before" if width == reduction.in_features else "after" if width == reduction.out_features else None


def _repeated(layer: nn.Module, idxs) -> list[int]:
    """Input channel ``c`` of a patch merging, as the four positions it has in the concatenation."""
    c = layer.reduction.in_features // 4
    return [int(i) + k * c for k in range(4) for i in idxs]


class PatchMergingPruner(tp.BasePruningFunc):
    """Torch-Pruning's pruner of a patch-merging module (see the module docstring)."""

    def prune_out_channels(self, layer: nn.Module, idxs):
        after = _merging(layer) == "after"  # Swin V2: the norm after the reduction has the outputs' width
        tp.prune_linear_out_channels(layer.reduction, idxs)
        if isinstance(getattr(layer, "out_dim", None), int):
            layer.out_dim = layer.reduction.out_features
        if after:
            tp.prune_layernorm_out_channels(layer.norm, idxs)
        return layer

    def prune_in_channels(self, layer: nn.Module, idxs):
        before, repeated = _merging(layer) == "before", _repeated(layer, idxs)
        tp.prune_linear_in_channels(layer.reduction, repeated)
        if before:
            tp.prune_layernorm_out_channels(layer.norm, repeated)
        if isinstance(getattr(layer, "dim", None), int):
            layer.dim = layer.reduction.in_features // 4
        return layer

    def get_out_channels(self, layer: nn.Module) -> int:
        return layer.reduction.out_features

    def get_in_channels(self, layer: nn.Module) -> int:
        return layer.reduction.in_features // 4


def merging_forward(self, input_feature: torch.Tensor, input_dimensions) -> torch.Tensor:
    """A patch merging's forward, computed as transformers does (pad to even sides, concatenate the 2x2
    neighbours ``(0,0), (1,0), (0,1), (1,1)`` (row, column) along the channels, norm and reduction) but by
    view and permute instead of strided slices and a concatenation: the same values, a graph whose channel
    dim Torch-Pruning follows."""
    height, width = input_dimensions
    batch, _, channels = input_feature.shape
    x = self.maybe_pad(input_feature.view(batch, height, width, channels), height, width)
    rows, cols = x.shape[1] // 2, x.shape[2] // 2
    x = x.view(batch, rows, 2, cols, 2, channels).permute(0, 1, 3, 4, 2, 5).reshape(batch, -1, 4 * channels)
    if _merging(self) == "before":
        return self.reduction(self.norm(x))
    return self.norm(self.reduction(x))


@contextlib.contextmanager
def swapped_forward(modules: list[nn.Module], forward):
    """Every module of ``modules`` runs ``forward(module, *args)`` instead of its own inside the block."""
    for m in modules:
        m.forward = types.MethodType(forward, m)
    try:
        yield
    finally:
        for m in modules:
            del m.forward


def traceable_merging(model: nn.Module):
    """Every transformers patch merging of ``model`` runs :func:`merging_forward` inside the block."""
    return swapped_forward([m for m in model.modules() if _merging(m) and hasattr(m, "maybe_pad")], merging_forward)


def call(model: nn.Module, example_inputs):
    """``model`` on ``example_inputs`` as Torch-Pruning calls it (a dict as keywords, a tuple as arguments)."""
    if isinstance(example_inputs, dict):
        return model(**example_inputs)
    return model(*example_inputs) if isinstance(example_inputs, (tuple, list)) else model(example_inputs)


def _trace_forward(model: nn.Module, example_inputs):
    with traceable_merging(model):
        return call(model, example_inputs)


def merging_config(model: nn.Module) -> PruneConfig:
    """The customized pruner of every patch-merging class in ``model`` and, for transformers' modules, the
    forward that traces them (an empty config without one)."""
    merging = [m for m in model.modules() if _merging(m)]
    return PruneConfig(customized_pruners={type(m): PatchMergingPruner() for m in merging} or None,
                       forward_fn=_trace_forward if any(hasattr(m, "maybe_pad") for m in merging) else None)
