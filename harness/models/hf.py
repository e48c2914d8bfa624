"""How to prune Hugging Face ``transformers`` vision classifiers (``hf:<model_type>`` references).

One adapter for every ``PreTrainedModel`` (found through the class hierarchy), following Torch-Pruning's
``examples/transformers/prune_hf_vit.py``:

- **Attention heads.** Every attention module with ``q_proj``/``k_proj``/``v_proj`` (or ``query``/``key``/
  ``value``) and ``num_attention_heads`` (ViT, DeiT, Swin, ...): Torch-Pruning puts q, k, v and the output
  projection's inputs in one group (their views couple them); the group is split into ``num_heads`` channel
  slices, so every head loses the same dims of q, k and v and all heads keep one head dim. The number of
  heads never changes (a Swin window's relative-position bias is per head).
- :func:`fix_attention` then sets ``head_dim`` (``attention_head_size``, ``all_head_size``) and ``scaling``
  on every attention module: transformers reshapes q/k/v by ``head_dim`` and Torch-Pruning cannot know it.
  ``scaling`` becomes ``head_dim ** -0.5``, as transformers builds it.
- **Patch merging** (Swin's and Swin V2's downsampling between stages): four 2x2 neighbours are
  concatenated along the channels (``[C] * 4``), normalized and reduced by a linear layer. Torch-Pruning
  maps neither that concatenation (it is on the last dim) nor the strided slices before it (it reads a
  slice of dim 1 of a 4-d tensor as a channel slice), so, as in Torch-Pruning's
  ``examples/transformers/prune_hf_swin.py``, the module is one customized layer
  (:class:`PatchMergingPruner`): a removed input channel ``c`` removes ``c``, ``c + C``, ``c + 2C`` and
  ``c + 3C`` of the LayerNorm and of the reduction's inputs; its outputs are the reduction's (and Swin
  V2's LayerNorm after it). The graph is traced with an equivalent forward (:func:`merging_forward`: the
  same 2x2 interleave by view and permute, which Torch-Pruning reads as channel-preserving), swapped in
  for the trace only. Methods see the module as a member without a weight of its own (it is not scored).
- **Bare parameters.** Embeddings (``cls_token``, ``position_embeddings``, ``mask_token``: their last dim
  is the hidden size) and layer scales (ConvNeXt's ``layer_scale_parameter``, ``[C]``) are declared, so they
  are pruned with the channels they scale; a relative-position bias table (per head) is never pruned.
"""

from __future__ import annotations

import contextlib
import types

import torch
import torch_pruning as tp
from torch import nn

from harness.models.heads import layer_scales
from harness.protocol.grouping import PruneConfig

#: attribute names of attention projections, per naming convention
PROJECTIONS = (("q_proj", "k_proj", "v_proj"), ("query", "key", "value"))
#: bare parameters pruned along their last dim (the hidden size)
EMBEDDINGS = ("cls_token", "position_embeddings", "mask_token", "distillation_token")


def _heads(module: nn.Module):
    """``(heads, [q, k, v])`` of an attention module, or None."""
    heads = getattr(module, "num_attention_heads", None) or getattr(module, "num_heads", None)
    if not isinstance(heads, int):
        return None
    for names in PROJECTIONS:
        layers = [getattr(module, n, None) for n in names]
        if all(isinstance(m, nn.Linear) for m in layers):
            return heads, layers
    return None


def fix_attention(model: nn.Module) -> None:
    """After channels are removed: the head dim (and scaling) of every attention module from its q width."""
    for module in model.modules():
        found = _heads(module)
        if found is None:
            continue
        heads, (q, _, _) = found
        head_dim = q.out_features // heads
        for attr in ("head_dim", "attention_head_size"):
            if hasattr(module, attr):
                setattr(module, attr, head_dim)
        if hasattr(module, "all_head_size"):
            module.all_head_size = q.out_features
        if hasattr(module, "scaling"):
            module.scaling = head_dim ** -0.5
        if hasattr(module, "qk_channels_per_head"):  # Perceiver: q/k and v widths of its own
            v = found[1][2]
            module.qk_channels, module.qk_channels_per_head = q.out_features, head_dim
            module.v_channels, module.v_channels_per_head = v.out_features, v.out_features // heads


def _merging(module: nn.Module) -> str | None:
    """``"before"`` / ``"after"``: a patch-merging module whose LayerNorm comes before (Swin) or after (Swin
    V2) its ``reduction`` (``Linear(4C, 2C)``); None for any other module."""
    reduction, norm = getattr(module, "reduction", None), getattr(module, "norm", None)
    if not (isinstance(reduction, nn.Linear) and isinstance(norm, nn.LayerNorm) and hasattr(module, "maybe_pad")
            and reduction.in_features % 4 == 0):
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
        if after:
            tp.prune_layernorm_out_channels(layer.norm, idxs)
        return layer

    def prune_in_channels(self, layer: nn.Module, idxs):
        before, repeated = _merging(layer) == "before", _repeated(layer, idxs)
        tp.prune_linear_in_channels(layer.reduction, repeated)
        if before:
            tp.prune_layernorm_out_channels(layer.norm, repeated)
        if hasattr(layer, "dim"):
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
def traceable_merging(model: nn.Module):
    """Every patch merging of ``model`` runs :func:`merging_forward` inside the block."""
    swapped = [m for m in model.modules() if _merging(m)]
    for m in swapped:
        m.forward = types.MethodType(merging_forward, m)
    try:
        yield
    finally:
        for m in swapped:
            del m.forward


def _trace_forward(model: nn.Module, example_inputs):
    with traceable_merging(model):
        if isinstance(example_inputs, dict):
            return model(**example_inputs)
        return model(*example_inputs) if isinstance(example_inputs, (tuple, list)) else model(example_inputs)


def _refuse_packed_heads(model: nn.Module) -> None:
    """LeViT packs every head's queries, keys and values in one projection, as ``[heads, key + key + value]``
    slices of unequal parts, and only the value parts reach the next layer: Torch-Pruning maps none of it."""
    from harness.protocol.grouping import Unprunable

    for name, module in model.named_modules():
        if isinstance(getattr(module, "queries_keys_values", None), nn.Module):
            raise Unprunable(f"cannot prune {type(model).__name__} at layer {name + '.queries_keys_values'!r}: it "
                             f"packs each head's queries, keys and values in one projection of unequal parts, which "
                             f"Torch-Pruning cannot map to the layers after it; pick another architecture (hf:vit, "
                             f"hf:deit, hf:swin, hf:convnext, hf:resnet)")


def prune_config(model: nn.Module) -> PruneConfig:
    _refuse_packed_heads(model)
    heads = {}
    for module in model.modules():
        found = _heads(module)
        if found is not None:
            for layer in found[1]:
                heads[layer] = found[0]
    params = [(p, p.dim() - 1) for m in model.modules() for n, p in m.named_parameters(recurse=False)
              if n in EMBEDDINGS]
    params += [(p, 0) for p, _ in layer_scales(model)]
    tables = [p for m in model.modules() for n, p in m.named_parameters(recurse=False)
              if n == "relative_position_bias_table"]
    merging = {type(m) for m in model.modules() if _merging(m)}
    return PruneConfig(unwrapped_parameters=params or None, out_channel_groups=heads, fixup=fix_attention,
                       ignored_params=tables, customized_pruners={t: PatchMergingPruner() for t in merging} or None,
                       forward_fn=_trace_forward if merging else None)
