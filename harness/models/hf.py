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
- **Patch merging** (Swin's and Swin V2's downsampling between stages): one customized layer for
  Torch-Pruning, traced through an equivalent forward (:mod:`harness.models.merging`).
- **Per-head position bias.** A relative-position bias table and Swin V2's ``logit_scale`` (per head) are
  never pruned; Swin V2's continuous position-bias MLP (positions in, one value per head out) runs without
  autograd while the graph is traced, so Torch-Pruning does not read its addition to the attention scores as a
  coupling to the heads' channels: its layers are in no group and keep their widths.
- **Bare parameters.** Embeddings (``cls_token``, ``position_embeddings``, ``mask_token``: their last dim
  is the hidden size) and layer scales (ConvNeXt's ``layer_scale_parameter``, ``[C]``) are declared, so they
  are pruned with the channels they scale.
"""

from __future__ import annotations

import torch
from torch import nn

from harness.models.heads import layer_scales
from harness.models.merging import call, merging_config, swapped_forward, traceable_merging
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


def _per_head(model: nn.Module) -> list[nn.Module]:
    """Modules that compute one value per attention head from positions alone (Swin V2's continuous
    position-bias MLP): the number of heads never changes, so they are never pruned."""
    return [m.continuous_position_bias_mlp for m in model.modules()
            if isinstance(getattr(m, "continuous_position_bias_mlp", None), nn.Module)]


def _detached(self, *args, **kwargs):
    """A module's own forward without autograd: its output (a per-head bias added to the attention scores)
    leaves Torch-Pruning's trace, which would otherwise read the addition as coupling it to the heads'
    channels. Its layers are then not in the graph: never pruned, never a group."""
    with torch.no_grad():
        return type(self).forward(self, *args, **kwargs)


def _trace_forward(model: nn.Module, example_inputs):
    with traceable_merging(model), swapped_forward(_per_head(model), _detached):
        return call(model, example_inputs)


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
              if n in ("relative_position_bias_table", "logit_scale")]  # per head
    config = PruneConfig(unwrapped_parameters=params or None, out_channel_groups=heads, fixup=fix_attention,
                         ignored_params=tables).merged(merging_config(model))
    if _per_head(model):
        config.forward_fn = _trace_forward
    return config
