"""timm's MLP-Mixer (``MlpMixer`` of ``MixerBlock`` blocks) and how to prune it.

A mixer block mixes tokens, then channels: ``x + mlp_tokens(norm1(x).transpose(1, 2)).transpose(1, 2)``, then
``x + mlp_channels(norm2(x))``. The token-mixing MLP runs across the patches: its input and output width is the
number of patches (fixed by the image and patch size), and only its hidden width (``mlp_tokens.fc1``'s outputs,
``fc2``'s inputs) may be pruned. Torch-Pruning reads a transpose as channel-preserving, so it would couple the
patches to the embedding channels. The graph is therefore traced with an equivalent forward
(:func:`_traced_block`): the same values, but the token MLP's input and its output leave the residual stream's
graph (detached), and the token MLP and ``norm1`` are reached through outputs of their own. Then the token MLP
is coupled to nothing outside itself: its hidden width is one group, its ``fc2`` (whose outputs are the
patches) is never a root, and ``norm1`` stays in the residual group. A gated MLP (gMixer's ``GluMlp``: ``fc1``'s
outputs split in halves) keeps its hidden width whole. ResMLP's and gMLP's blocks (a linear layer across tokens
with a layer scale or a gate) are refused in one line.
"""

from __future__ import annotations

import torch
from torch import nn

from harness.models.merging import call, swapped_forward
from harness.protocol.grouping import PruneConfig


def _blocks(model: nn.Module) -> list[nn.Module]:
    from timm.models.mlp_mixer import MixerBlock

    return [m for m in model.modules() if isinstance(m, MixerBlock)]


def _trace_forward(model: nn.Module, example_inputs):
    """``model``'s output plus, per mixer block, ``norm1``'s and the token MLP's outputs (see the module
    docstring): what Torch-Pruning traces."""
    extras: list[torch.Tensor] = []

    def traced_block(self, x: torch.Tensor) -> torch.Tensor:
        normed = self.norm1(x)
        tokens = self.mlp_tokens(normed.transpose(1, 2).detach()).transpose(1, 2)
        extras.extend((normed, tokens))
        x = x + self.drop_path(tokens.detach())
        return x + self.drop_path(self.mlp_channels(self.norm2(x)))

    with swapped_forward(_blocks(model), traced_block):
        out = call(model, example_inputs)
    return [out, *extras]


def prune_config(model: nn.Module) -> PruneConfig:
    """The token MLPs' ``fc2`` (outputs: the patches) never a root; the graph traced by :func:`_trace_forward`."""
    from harness.protocol.grouping import Unprunable

    blocks = _blocks(model)
    for name, module in model.named_modules():
        if type(module).__name__ in ("ResBlock", "SpatialGatingBlock"):
            across = "linear_tokens" if hasattr(module, "linear_tokens") else "mlp_channels.gate.proj"
            raise Unprunable(
                f"cannot prune {type(model).__name__} at layer {name + '.' + across!r}: a linear layer across the "
                f"tokens with a layer scale or a gate (ResMLP, gMLP), which the harness does not map; pick another "
                f"architecture (timm: mixer family)")
    if not blocks:
        return PruneConfig()
    kept = [b.mlp_tokens.fc2 for b in blocks]
    # a gated MLP (gMixer's GluMlp: fc1's outputs split in a value and a gate half) keeps its hidden width whole:
    # Torch-Pruning does not map the split
    kept += [mlp.fc1 for b in blocks for mlp in (b.mlp_tokens, b.mlp_channels)
             if mlp.fc1.out_features != mlp.fc2.in_features]
    return PruneConfig(ignored_layers=kept, forward_fn=_trace_forward)
