"""timm's ReXNet (``RexNet``) and how to prune it.

A ReXNet block (``LinearBottleneck``) with a shortcut widens its input: ``in_chs <= out_chs``, and only the
first ``in_chs`` output channels get the residual, ``cat([x[:, :in_chs] + shortcut, x[:, in_chs:]])``.
Torch-Pruning cannot follow that: it infers a slice's width as its input's (every channel of the block's
last conv), so the concatenation's offsets are wrong, its index mappings send channels to positions beyond
each tensor, and the walk that collects a group never ends (``timm:rexnet_100`` spent hours in
``get_all_groups``). The same values computed with ``torch.split`` (whose sizes autograd records) are traced
correctly (:func:`traced_forward`, swapped in for the trace only): the first ``in_chs`` channels of the
block's last conv belong to the residual chain, the rest are its own. After pruning, :func:`fix_widths`
sets each block's ``in_channels`` (where timm's forward slices) and ``out_channels`` to the pruned widths.
"""

from __future__ import annotations

import torch
from torch import nn

from harness.models.merging import call, swapped_forward
from harness.protocol.grouping import PruneConfig, chunk_order


def _block(module: nn.Module) -> bool:
    """timm's ``LinearBottleneck``: ``in_channels`` / ``out_channels`` attributes and a last conv ``conv_pwl``."""
    return (type(module).__name__ == "LinearBottleneck" and isinstance(getattr(module, "in_channels", None), int)
            and hasattr(module, "conv_pwl"))


def _partial(module: nn.Module) -> bool:
    """A block whose residual covers the first ``in_channels`` of its outputs (``use_shortcut``)."""
    return _block(module) and bool(getattr(module, "use_shortcut", False))


def _input_conv(block: nn.Module) -> nn.Conv2d:
    """The block's first conv: its input width is the block's."""
    return next(m for m in block.modules() if isinstance(m, nn.Conv2d))


def traced_forward(self, x: torch.Tensor) -> torch.Tensor:
    """A partial-residual block's forward, as timm computes it, with the residual added through
    ``torch.split`` instead of a slice: the same values, a graph whose channels Torch-Pruning maps."""
    self.use_shortcut = False  # timm's forward up to the residual
    try:
        y = type(self).forward(self, x)
    finally:
        self.use_shortcut = True
    if self.drop_path is not None:
        y = self.drop_path(y)
    extra = y.shape[1] - x.shape[1]
    if extra == 0:
        return y + x
    head, tail = torch.split(y, [x.shape[1], extra], dim=1)
    # ``x + head``: Torch-Pruning infers an addition's width from its last input (the chunk, not x's producer);
    # ``tail.clone()``: a chunk that feeds a concatenation directly gets the two index mappings composed in the
    # wrong order (the split's offset before the concatenation's), so it passes through a node of its own
    return torch.cat([x + head, tail.clone()], dim=1)


def _trace_forward(model: nn.Module, example_inputs):
    with swapped_forward([m for m in model.modules() if _partial(m)], traced_forward):
        return call(model, example_inputs)


def fix_widths(model: nn.Module) -> None:
    """Every block's ``in_channels`` (where a partial residual slices) and ``out_channels`` at its pruned widths."""
    for m in model.modules():
        if _block(m):
            m.in_channels = _input_conv(m).in_channels
            m.out_channels = m.conv_pwl.conv.out_channels


def prune_config(model: nn.Module) -> PruneConfig:
    """timm's ReXNet: traced with :func:`traced_forward`, widths fixed after pruning."""
    return PruneConfig(forward_fn=_trace_forward, fixup=fix_widths, graph_fixup=chunk_order)
