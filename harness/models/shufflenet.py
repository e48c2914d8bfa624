"""torchvision's ShuffleNetV2 and how to prune it.

Every block ends in a channel shuffle: ``cat(a, b)`` (the pass-through half and ``branch2``'s output, or
``branch1``'s and ``branch2``'s outputs) viewed as ``[2, C/2]``, transposed and flattened, so output ``2j`` is
``a[j]`` and ``2j + 1`` is ``b[j]``; the next block splits that in halves (``chunk``). A channel of a stage's
width therefore moves at every block, and half of them pass through the next block untouched: removing one
keeps the shuffle a restriction of the original only for sets balanced across every later split - no set of
channels that one group of Torch-Pruning can describe. (Torch-Pruning's reshape mapping does not follow the
shuffle either: it divides by zero on it.) So the stage widths - ``branch1``'s convs (they read the stage's
input and write its output) and ``branch2``'s last conv - are kept whole. What is pruned:

- the hidden width of every ``branch2`` (its first 1x1 conv's outputs, the depthwise conv, its second 1x1
  conv's inputs);
- the stem's width (``conv1``: the inputs of the first block's two branches);
- ``conv5``'s width (the classifier's inputs).

The graph is traced with an equivalent forward (:func:`_trace_forward`): the same values, but each block's
output leaves the graph (detached) after the shuffle, and its branches are reached through outputs of their
own; the next block then reads a tensor with no producer, so no group crosses a shuffle.
"""

from __future__ import annotations

import torch
from torch import nn

from harness.models.merging import call, swapped_forward
from harness.protocol.grouping import PruneConfig


def _blocks(model: nn.Module) -> list[nn.Module]:
    from torchvision.models.shufflenetv2 import InvertedResidual

    return [m for m in model.modules() if isinstance(m, InvertedResidual)]


def _trace_forward(model: nn.Module, example_inputs):
    """``model``'s output plus every block's branch outputs (see the module docstring): what Torch-Pruning
    traces."""
    from torchvision.models.shufflenetv2 import channel_shuffle

    extras: list[torch.Tensor] = []

    def traced_block(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            x1, x2 = x.chunk(2, dim=1)
            branches = (x1, self.branch2(x2))
            extras.append(branches[1])
        else:
            branches = (self.branch1(x), self.branch2(x))
            extras.extend(branches)
        return channel_shuffle(torch.cat(branches, dim=1), 2).detach()

    with swapped_forward(_blocks(model), traced_block):
        out = call(model, example_inputs)
    return [out, *extras]


def prune_config(model: nn.Module) -> PruneConfig:
    """The stage widths kept whole (``branch1``'s convs, the last conv of every ``branch2``); the graph traced by
    :func:`_trace_forward`."""
    kept = []
    for i, block in enumerate(_blocks(model)):
        branch1 = [m for m in block.branch1.modules() if isinstance(m, nn.Conv2d)]
        # the first block reads the stem: its depthwise conv follows the stem's channels (a group with an ignored
        # out-channel member would not be pruned at all); every later block reads a shuffle
        kept += branch1[1:] if i == 0 else branch1
        kept += [m for m in block.branch2.modules() if isinstance(m, nn.Conv2d)][-1:]
    return PruneConfig(ignored_layers=kept, forward_fn=_trace_forward)
