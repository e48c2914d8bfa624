"""ViT-Small/16 (timm ``vit_small_patch16_224``) and how to prune it.

Built with ``pretrained=False`` (``HF_HUB_OFFLINE=1`` is set before timm is imported, so timm
never waits on the Hub); a track's base checkpoint is a local state dict. 22,050,664 parameters
at 1000 classes and 224 px.

Pruning (:func:`prune_config`), following Torch-Pruning's ``examples/transformers/prune_timm_vit.py``:

- ``pos_embed`` and ``cls_token`` are bare parameters: they are pruned with the embedding dim
  (their last dim), like the LayerNorms, patch embedding and every block's residual width.
- Each block's fused ``qkv`` projection is one group whose channels are laid out ``[3, heads,
  head_dim]``. It is split into ``3 * num_heads`` channel groups, so removing a "channel" removes
  the same dim from every head of q, k and v: heads keep a common head dim (what Torch-Pruning
  calls ``prune_head_dims``); the number of heads never changes. ``attn.proj`` loses the matching
  input features (Torch-Pruning maps them to the v part of qkv).
- :func:`fix_attention` then sets ``head_dim``, ``attn_dim`` and ``scale`` on every Attention
  module (Torch-Pruning cannot). ``scale`` becomes ``head_dim ** -0.5``: timm's fused path
  (``F.scaled_dot_product_attention``) always scales by ``1/sqrt(head_dim)`` and ignores
  ``scale``, so this keeps the fused and eager paths computing the same function.
- The classifier (``head``) keeps its outputs; its inputs follow the embedding dim.

A pruned ViT is an ordinary timm model with smaller layers and updated attributes, so it saves and
reloads whole (``torch.save`` / ``torch.load(weights_only=False)``) without the harness. Prune it
in one round: every round re-derives the head groups from the current shapes, but Torch-Pruning's
own progressive head pruning is known to crash, and tracks use ``rounds: 1``.
"""

from __future__ import annotations

import os

from torch import nn

from harness.models.heads import layer_scales
from harness.protocol.grouping import PruneConfig

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before timm is imported anywhere through this module

#: timm's model name for PruningBench's ViT-Small
TIMM_NAME = "vit_small_patch16_224"
PATCH = 16


def vit_small(num_classes: int, in_chans: int = 3, image_size: int = 224, drop_path_rate: float = 0.0) -> nn.Module:
    """timm ``vit_small_patch16_224`` (embed 384, depth 12, 6 heads) at ``image_size`` (a multiple of 16)."""
    if image_size % PATCH:
        raise ValueError(f"vit_small: image_size must be a multiple of {PATCH}, got {image_size}")
    import timm

    return timm.create_model(TIMM_NAME, pretrained=False, num_classes=num_classes, in_chans=in_chans,
                             img_size=image_size, drop_path_rate=drop_path_rate)


def _attentions(model: nn.Module) -> list[nn.Module]:
    from timm.layers import Attention

    return [m for m in model.modules() if isinstance(m, Attention)]


#: the bare parameters of timm's ViT family, pruned along their last dim (the embedding dim)
TOKENS = ("cls_token", "reg_token", "dist_token", "pos_embed")


def prune_config(model: nn.Module) -> PruneConfig:
    """Head groups of every qkv projection, the bare embedding parameters (tokens, position embedding,
    DeiT-III's layer-scale ``gamma``), extra classifier heads (a distilled DeiT's ``head_dist``) kept
    whole, and :func:`fix_attention`. For every timm ``VisionTransformer`` and subclass (ViT, DeiT,
    DeiT-III, distilled DeiT)."""
    params = [(p, p.dim() - 1) for p in (getattr(model, n, None) for n in TOKENS) if isinstance(p, nn.Parameter)]
    heads = {a.qkv: 3 * a.num_heads for a in _attentions(model)}
    extra = [h for h in (getattr(model, "head_dist", None),) if isinstance(h, nn.Linear)]
    return PruneConfig(ignored_layers=extra, unwrapped_parameters=params + layer_scales(model) or None,
                       out_channel_groups=heads, fixup=fix_attention)


def fix_attention(model: nn.Module) -> None:
    """Re-derive ``head_dim``, ``attn_dim`` and ``scale`` of every Attention from its pruned qkv layer."""
    for a in _attentions(model):
        width = a.qkv.out_features
        if width % (3 * a.num_heads):
            raise RuntimeError(f"qkv has {width} outputs, not 3 x {a.num_heads} heads x a common head dim")
        a.head_dim = width // (3 * a.num_heads)
        a.attn_dim = a.num_heads * a.head_dim
        a.scale = a.head_dim ** -0.5
        if a.proj.in_features != a.attn_dim:
            raise RuntimeError(f"attn.proj takes {a.proj.in_features} inputs, expected {a.attn_dim}")
