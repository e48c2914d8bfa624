"""timm transformers (and hybrids) beyond ``VisionTransformer`` (:mod:`harness.models.vit`) and how to prune them.

- **Swin** (``SwinTransformer``): every window attention's fused ``qkv`` is split into ``3 * num_heads``
  channel slices (every head of q, k and v loses the same dims, the number of heads stays: the
  relative-position bias table is per head and never pruned); :func:`fix_heads` then sets ``head_dim`` and
  ``scale``. Patch merging: :mod:`harness.models.merging`.
- **CaiT** (``Cait``) and **EVA** (``Eva``): their attention reshapes its output by the width of its *input*
  (``reshape(B, N, C)``), so the attention width, the head dim and the residual width are one number; EVA
  also rotates head dims by a fixed rotary table, and CaiT mixes heads with ``proj_l``/``proj_w``. Their
  adapter prunes what is independent of that number: the hidden width of every MLP (``mlp.fc1``'s outputs,
  with the layers they feed). Every other conv and linear layer is kept whole. A gated MLP (EVA-02's
  ``GluMlp``: ``fc1``'s outputs split in two halves) cannot be pruned either; an EVA with only those is
  refused in one line.
- **PVTv2** (``PyramidVisionTransformerV2``): its attention reshapes its output by its input width too, so it
  gets the same adapter; its MLP's depthwise conv between ``fc1`` and ``fc2`` (channels first, after a
  transpose and a view) follows the hidden channels.

**MobileViT** (timm's ``ByobNet`` with ``MobileVitBlock`` blocks): a conv network whose blocks unfold the feature
map into patches and run ViT blocks on them; each fused ``qkv`` gets head slices and :func:`fix_heads`, as
Swin's. Torch-Pruning maps the unfold and fold (reshapes and transposes that keep the channels last/first).

Bare parameters: the tokens and position embedding (``[1, N, C]``, pruned along C) and the per-channel layer
scales (``gamma_1``/``gamma_2``, ``LayerScale.gamma``) are declared, so they follow the channels they belong to.
"""

from __future__ import annotations

from torch import nn

from harness.models.heads import layer_scales
from harness.models.merging import merging_config
from harness.protocol.grouping import PruneConfig

#: timm's bare token parameters, ``[1, N, C]``: pruned along their last dim
TOKENS = ("cls_token", "reg_token", "dist_token", "pos_embed", "mask_token")


def bare_parameters(model: nn.Module) -> list:
    """``[(parameter, dim)]``: the tokens and position embeddings (last dim) and layer scales (dim 0)."""
    params = [(p, p.dim() - 1) for m in model.modules() for n, p in m.named_parameters(recurse=False)
              if n in TOKENS and p.dim() == 3]
    return params + layer_scales(model)


def _fused(model: nn.Module):
    """``(attention module, heads)`` of every module with a fused ``qkv`` linear layer and ``num_heads``."""
    for m in model.modules():
        if isinstance(getattr(m, "qkv", None), nn.Linear) and isinstance(getattr(m, "num_heads", None), int):
            yield m, m.num_heads


def fix_heads(model: nn.Module) -> None:
    """Re-derive ``head_dim`` (``attn_dim``) and ``scale`` of every fused attention from its pruned qkv."""
    for a, heads in _fused(model):
        head_dim = a.qkv.out_features // (3 * heads)
        if hasattr(a, "head_dim"):
            a.head_dim = head_dim
        if hasattr(a, "attn_dim"):
            a.attn_dim = head_dim * heads
        if hasattr(a, "scale"):
            a.scale = head_dim ** -0.5


def swin(model: nn.Module) -> PruneConfig:
    """timm's Swin: head slices of every qkv, the bias tables kept, patch merging, bare parameters."""
    tables = [p for m in model.modules() for n, p in m.named_parameters(recurse=False)
              if n == "relative_position_bias_table"]
    return PruneConfig(unwrapped_parameters=bare_parameters(model) or None, ignored_params=tables,
                       out_channel_groups={a.qkv: 3 * h for a, h in _fused(model)},
                       fixup=fix_heads).merged(merging_config(model))


def mlp_only(model: nn.Module) -> PruneConfig:
    """CaiT, EVA, PVTv2: only the MLPs' hidden widths (every conv and linear layer but ``mlp.fc1`` is kept whole). A
    gated MLP (``fc1`` twice as wide as ``fc2``'s inputs, split in halves) is kept whole too: Torch-Pruning does
    not map the split. A model left with nothing to prune is refused (:class:`Unprunable`, one line)."""
    from harness.protocol.grouping import Unprunable

    mlps = [(n, m) for n, m in model.named_modules() if isinstance(getattr(m, "fc1", None), nn.Linear)
            and isinstance(getattr(m, "fc2", None), nn.Linear)]
    hidden = {id(m.fc1) for _, m in mlps if m.fc1.out_features == m.fc2.in_features}
    # PVTv2's MLP: a depthwise conv between fc1 and fc2 follows the hidden channels (a member, never kept whole)
    hidden |= {id(m.dwconv) for _, m in mlps
               if id(m.fc1) in hidden and isinstance(getattr(m, "dwconv", None), nn.Conv2d)}
    if not hidden:
        where = f"{mlps[0][0]}.fc1" if mlps else "(model)"
        raise Unprunable(
            f"cannot prune {type(model).__name__} at layer {where!r}: its attention width is its input width and "
            f"its MLPs are gated (fc1 split in two halves, which Torch-Pruning does not map), so no width can be "
            f"pruned on its own; pick another architecture (timm: vit, deit, swin or cait families)")
    kept = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.modules.conv._ConvNd)) and id(m) not in hidden]
    return PruneConfig(ignored_layers=kept, unwrapped_parameters=bare_parameters(model) or None)


def byobnet(model: nn.Module) -> PruneConfig:
    """timm's ByobNet: MobileViT's blocks run a ViT transformer (fused qkv, ``num_heads``) on the unfolded
    patches of a conv feature map; their qkv gets head slices and :func:`fix_heads`, as Swin's. A ByobNet
    without attention (conv blocks only) needs nothing."""
    heads = {a.qkv: 3 * h for a, h in _fused(model)}
    if not heads:
        return PruneConfig()
    return PruneConfig(unwrapped_parameters=bare_parameters(model) or None, out_channel_groups=heads,
                       fixup=fix_heads)
