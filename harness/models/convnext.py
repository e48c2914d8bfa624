"""ConvNeXt (timm's and torchvision's) and how to prune it.

A ConvNeXt block is a depthwise 7x7 conv, a LayerNorm (timm: ``LayerNorm2d`` over channels-first maps,
or channels-last; torchvision: ``Permute`` + ``LayerNorm``), a pointwise MLP (linear layers on
channels-last maps, or 1x1 convs), a per-channel layer scale (timm ``gamma``, torchvision
``layer_scale``: a bare ``nn.Parameter``) and a residual addition. Torch-Pruning traces all of it; the
only thing it would guess is the layer scale's pruning dim: :func:`prune_config` declares it (dim 0,
the channels), so a stage's residual group prunes every block's scale with the channels it scales.
"""

from __future__ import annotations

from torch import nn

from harness.models.heads import layer_scales
from harness.protocol.grouping import PruneConfig


def prune_config(model: nn.Module) -> PruneConfig:
    """The layer-scale parameters, declared with their channel dim."""
    return PruneConfig(unwrapped_parameters=layer_scales(model) or None)
