"""``hf:`` models beyond a one-stage ViT: multi-stage Swin (patch merging), DeiT, Perceiver, LeViT.

The reference for "pruned correctly" is transformers itself: every group of a model is pruned to half of
each of its slices (the first channels of every head, every patch-merging copy, every residual and MLP
width), and the result must be the model transformers builds with half the widths, loaded with the big
model's weights sliced by hand - the same logits, the same parameter count. A mapping that loses or
shifts a channel anywhere (Swin's concatenation of four neighbours, a head's q/k/v, a token) gives other
logits.
"""

from __future__ import annotations

import re

import pytest
import torch
import torch_pruning as tp

from harness.errors import HarnessError
from harness.models import classifier_of, create_model, prune_config_of
from harness.protocol.grouping import (PruneConfig, Unprunable, apply_plan, check_groups, describe_groups,
                                       floor_plan)

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _config(model):
    return prune_config_of(model).merged(PruneConfig(ignored_layers=[classifier_of(model)]))


def _halved(model, x):
    """``model`` with every group pruned to the first half of each of its slices (through the harness)."""
    config = _config(model)
    groups = describe_groups(model, x, config)
    apply_plan(model, x, config, floor_plan(groups, 0.5))
    return groups


def _kept(size: int, blocks: int) -> list[int]:
    """The first half of each of ``blocks`` equal slices of ``range(size)``."""
    part = size // blocks
    return [b * part + j for b in range(blocks) for j in range(part // 2)]


def _sliced(big: dict, small: dict, blocks_of) -> dict:
    """``big``'s tensors cut to ``small``'s shapes by hand: along every halved dim, the first half of each of
    ``blocks_of(name, dim)`` slices."""
    out = {}
    for name, ref in small.items():
        t = big[name]
        for d, (n, m) in enumerate(zip(t.shape, ref.shape)):
            if n != m:
                assert m * 2 == n, (name, t.shape, ref.shape)
                t = t.index_select(d, torch.tensor(_kept(n, blocks_of(name, d))))
        out[name] = t
    return out


def _head_slices(name: str, dim: int, heads: int):
    """Head slices of an attention projection: q/k/v outputs and the output projection's inputs."""
    if re.search(r"\.(q_proj|k_proj|v_proj)\.(weight|bias)$", name) and dim == 0:
        return heads
    if re.search(r"\.o_proj\.weight$", name) and dim == 1:
        return heads
    return None


SWIN = dict(embed_dim=16, depths=[2, 1, 1], num_heads=[2, 2, 4], window_size=2, patch_size=2)


def test_a_multi_stage_swin_prunes_as_transformers_builds_a_narrower_one():
    """Three stages, two patch mergings: halved by the harness = transformers' Swin with embed_dim 8."""
    torch.manual_seed(0)
    model = create_model("hf:swin", num_classes=10, in_chans=1, image_size=16, **SWIN).eval()
    x = torch.rand(2, 1, 16, 16)
    big = {k: v.clone() for k, v in model.state_dict().items()}
    groups = _halved(model, x[:1])
    merging = [g for g in groups if any(m.layer.endswith("downsample") for m in g.members)]
    assert len(merging) == 3  # the widths of the three stages: each merging sits between two of them
    small = create_model("hf:swin", num_classes=10, in_chans=1, image_size=16, **{**SWIN, "embed_dim": 8}).eval()

    def blocks(name, dim):
        stage = int(re.search(r"layers\.(\d+)\.", name).group(1)) if "layers." in name else 0
        if "downsample" in name and (".norm." in name or dim == 1):
            return 4  # [C] * 4: the four neighbours
        return _head_slices(name, dim, SWIN["num_heads"][stage]) or 1

    small.load_state_dict(_sliced(big, small.state_dict(), blocks))
    with torch.no_grad():
        torch.testing.assert_close(model(x).logits, small(x).logits, rtol=1e-4, atol=1e-5)
    for s, stage in enumerate(model.swin.encoder.layers):
        for block in stage.blocks:
            a = block.attention
            assert a.q_proj.out_features == a.k_proj.out_features == a.v_proj.out_features == a.o_proj.in_features
            assert a.num_attention_heads == SWIN["num_heads"][s] and a.head_dim * a.num_attention_heads == \
                a.q_proj.out_features and a.scaling == a.head_dim ** -0.5
    count = sum(p.numel() for p in model.parameters())
    assert count == sum(p.numel() for p in small.parameters()) == tp.utils.count_ops_and_params(model, x[:1])[1]


def test_patch_merging_prunes_its_four_copies_by_hand():
    """One removed channel c of a stage removes c, c+C, c+2C, c+3C of the merging's norm and reduction inputs."""
    torch.manual_seed(0)
    model = create_model("hf:swin", num_classes=10, in_chans=1, image_size=16, **SWIN).eval()
    merge = model.swin.encoder.layers[0].downsample
    norm, reduction = merge.norm.weight.detach().clone(), merge.reduction.weight.detach().clone()
    x = torch.rand(1, 1, 16, 16)
    config = _config(model)
    stage0 = next(g for g in describe_groups(model, x, config)
                  if any(m.layer.endswith("layers.0.downsample") and m.dim == "in" for m in g.members))
    apply_plan(model, x, config, {stage0.id: [3, 10]})
    keep = [i for i in range(64) if i % 16 not in (3, 10)]
    assert torch.equal(merge.norm.weight, norm[keep]) and torch.equal(merge.reduction.weight, reduction[:, keep])
    assert model(torch.rand(2, 1, 16, 16)).logits.shape == (2, 10)


DEIT = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, patch_size=4)


def test_hf_deit_builds_and_prunes_as_a_narrower_deit():
    """transformers 5 needs config.architectures for a type with two classifier classes: DeiT builds its
    first (no teacher head); its cls and distillation tokens and position embeddings follow the width."""
    from transformers import DeiTForImageClassification

    torch.manual_seed(0)
    model = create_model("hf:deit", num_classes=10, in_chans=1, image_size=8, **DEIT).eval()
    assert type(model) is DeiTForImageClassification
    x = torch.rand(2, 1, 8, 8)
    big = {k: v.clone() for k, v in model.state_dict().items()}
    _halved(model, x[:1])
    small = create_model("hf:deit", num_classes=10, in_chans=1, image_size=8,
                         **{**DEIT, "hidden_size": 16, "intermediate_size": 32}).eval()
    small.load_state_dict(_sliced(big, small.state_dict(),
                                  lambda name, dim: _head_slices(name, dim, DEIT["num_attention_heads"]) or 1))
    with torch.no_grad():
        torch.testing.assert_close(model(x).logits, small(x).logits, rtol=1e-4, atol=1e-5)
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in small.parameters())


def test_hf_architectures_kwarg_picks_another_classifier_class_and_both_heads_keep_their_outputs():
    from transformers import DeiTForImageClassificationWithTeacher

    model = create_model("hf:deit", num_classes=10, in_chans=1, image_size=8,
                         architectures=["DeiTForImageClassificationWithTeacher"], **DEIT).eval()
    assert type(model) is DeiTForImageClassificationWithTeacher
    x = torch.rand(1, 1, 8, 8)
    config = _config(model)  # protects one classifier; the other is coupled to it (their logits are averaged)
    groups = describe_groups(model, x, config)
    check_groups(model, x, config, groups, 0.1)
    assert not [g.root for g in groups if "classifier" in g.root]
    apply_plan(model, x, config, floor_plan(groups, 0.25))
    assert model(torch.rand(2, 1, 8, 8)).logits.shape == (2, 10)


PERCEIVER = dict(num_latents=8, d_latents=32, num_blocks=1, num_self_attends_per_block=1, num_self_attention_heads=2,
                 num_cross_attention_heads=1)


def test_hf_perceiver_builds_on_one_channel_and_prunes_consistently():
    """The learned-preprocessing Perceiver ignores num_channels: its 3-channel input conv is rebuilt. Pruned to
    the floor, every attention keeps its heads with one q/k and one v width per head, and it runs."""
    torch.manual_seed(0)
    model = create_model("hf:perceiver", num_classes=10, in_chans=1, image_size=8, **PERCEIVER).eval()
    assert model.perceiver.input_preprocessor.convnet_1x1.in_channels == 1
    x = torch.rand(1, 1, 8, 8)
    config = _config(model)
    groups = describe_groups(model, x, config)
    check_groups(model, x, config, groups, 0.1)
    apply_plan(model, x, config, floor_plan(groups, 0.25))
    attentions = [m for m in model.modules() if hasattr(m, "qk_channels_per_head")]
    assert len(attentions) == 3
    for a in attentions:
        assert a.query.out_features == a.key.out_features == a.qk_channels == a.num_heads * a.qk_channels_per_head
        assert a.value.out_features == a.v_channels == a.num_heads * a.v_channels_per_head
        assert a.qk_channels < 512 if a.query.out_features > 32 else a.qk_channels < 32
    assert model(torch.rand(3, 1, 8, 8)).logits.shape == (3, 10)


def test_hf_levit_builds_and_is_refused_in_one_line_naming_its_packed_projection():
    model = create_model("hf:levit", num_classes=10, in_chans=1, image_size=32, hidden_sizes=[16, 24, 32],
                         num_attention_heads=[2, 2, 2], depths=[1, 1, 1], key_dim=[8, 8, 8])
    with pytest.raises(Unprunable) as e:
        prune_config_of(model)
    text = str(e.value)
    assert isinstance(e.value, HarnessError) and "\n" not in str(e.value)
    assert text.startswith("cannot prune LevitForImageClassification at layer "
                           "'levit.encoder.stages.0.layers.0.module.queries_keys_values'") and "hf:swin" in text


# --------------------------------------------------------------------------- timm's Swin, CaiT, EVA

TIMM_SWIN = dict(embed_dim=16, depths=(2, 1), num_heads=(2, 4), window_size=2, patch_size=2)


def test_timm_swin_prunes_as_timm_builds_a_narrower_one():
    """timm's Swin: qkv head slices, per-head bias tables kept, patch merging as one layer; halved = timm's
    Swin with embed_dim 8 and hand-sliced weights."""
    torch.manual_seed(0)
    model = create_model("timm:swin_tiny_patch4_window7_224", num_classes=10, in_chans=1, image_size=16,
                         **TIMM_SWIN).eval()
    x = torch.rand(2, 1, 16, 16)
    big = {k: v.clone() for k, v in model.state_dict().items()}
    _halved(model, x[:1])
    small = create_model("timm:swin_tiny_patch4_window7_224", num_classes=10, in_chans=1, image_size=16,
                         **{**TIMM_SWIN, "embed_dim": 8}).eval()

    def blocks(name, dim):
        stage = int(re.search(r"layers\.(\d+)\.", name).group(1)) if "layers." in name else 0
        heads = TIMM_SWIN["num_heads"][stage]
        if "downsample" in name and (".norm." in name or dim == 1):
            return 4
        if re.search(r"\.qkv\.(weight|bias)$", name) and dim == 0:
            return 3 * heads
        return heads if re.search(r"attn\.proj\.weight$", name) and dim == 1 else 1

    small.load_state_dict(_sliced(big, small.state_dict(), blocks))
    with torch.no_grad():
        torch.testing.assert_close(model(x), small(x), rtol=1e-4, atol=1e-5)
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in small.parameters())
    for stage, heads in zip(model.layers, TIMM_SWIN["num_heads"]):
        for block in stage.blocks:
            assert block.attn.num_heads == heads and block.attn.scale == (block.attn.qkv.out_features // 3 // heads) ** -0.5


@pytest.mark.parametrize("name, kwargs", [
    ("cait_xxs24_224", dict(embed_dim=32, depth=1, num_heads=2, patch_size=4, depth_token_only=1, init_values=0.5)),
    ("eva_giant_patch14_224", dict(embed_dim=32, depth=1, num_heads=2, patch_size=4, init_values=0.5)),
])
def test_cait_and_eva_prune_their_mlps_as_timm_builds_narrower_ones(name, kwargs):
    """Attention width = input width in CaiT and EVA: only the MLP hidden widths are pruned; halved = the same
    model with mlp_ratio 2 instead of 4. The per-channel layer scales (gamma_1/gamma_2) are declared."""
    torch.manual_seed(0)
    ratio = {"mlp_ratio_token_only": 4.0} if name.startswith("cait") else {}
    model = create_model(f"timm:{name}", num_classes=10, in_chans=1, image_size=16, mlp_ratio=4.0, **ratio,
                         **kwargs).eval()
    config = _config(model)
    gammas = [n for n, p in model.named_parameters() if n.rpartition(".")[2] in ("gamma_1", "gamma_2")]
    declared = {id(p) for p, _ in config.unwrapped_parameters}
    assert gammas and all(id(p) in declared for n, p in model.named_parameters() if n in gammas)
    x = torch.rand(2, 1, 16, 16)
    big = {k: v.clone() for k, v in model.state_dict().items()}
    groups = _halved(model, x[:1])
    assert groups and all(g.root.endswith("mlp.fc1") for g in groups)
    small = create_model(f"timm:{name}", num_classes=10, in_chans=1, image_size=16, mlp_ratio=2.0,
                         **{k: 2.0 for k in ratio}, **kwargs).eval()
    small.load_state_dict(_sliced(big, small.state_dict(), lambda name, dim: 1))
    with torch.no_grad():
        torch.testing.assert_close(model(x), small(x), rtol=1e-4, atol=1e-5)


def test_an_eva_with_gated_mlps_only_is_refused_in_one_line():
    model = create_model("timm:eva02_tiny_patch14_224", num_classes=10, in_chans=1, image_size=16, embed_dim=32,
                         depth=1, num_heads=2, patch_size=4)
    with pytest.raises(Unprunable) as e:
        prune_config_of(model)
    assert str(e.value).startswith("cannot prune Eva at layer 'blocks.0.mlp.fc1': its attention width is its "
                                   "input width and its MLPs are gated") and "\n" not in str(e.value)


class _HiddenScale(torch.nn.Module):
    """A layer scale Torch-Pruning cannot see (used detached): it stays at its width when the conv is pruned."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 8, 3)
        self.gamma = torch.nn.Parameter(torch.ones(8, 1, 1))
        self.fc = torch.nn.Linear(8, 10)

    def forward(self, x):
        return self.fc((self.conv(x) * self.gamma.detach()).mean((2, 3)))


def test_a_parameter_left_at_its_width_is_refused_with_advice_that_applies():
    """A parameter cannot go in pruning.ignored_layers: the refusal names the parameter and the adapter field."""
    model = _HiddenScale().eval()
    x = torch.rand(1, 1, 8, 8)
    config = PruneConfig(ignored_layers=[model.fc])
    with pytest.raises(Unprunable) as e:
        check_groups(model, x, config, describe_groups(model, x, config), 0.1)
    assert str(e.value) == (
        "cannot prune _HiddenScale at parameter 'gamma': per-channel parameter gamma stays at its width 8, which no "
        "pruned layer has any more; declare gamma with the dim that holds its channels in the architecture's prune "
        "adapter (PruneConfig.unwrapped_parameters, registered in harness.models.PRUNE_ADAPTERS)")


@pytest.mark.parametrize("ref, kwargs", [
    ("hf:swin", dict(embed_dim=16, depths=[1, 1], num_heads=[2, 2], window_size=2, patch_size=2)),
    ("timm:swin_tiny_patch4_window7_224", dict(embed_dim=16, depths=[1, 1], num_heads=[2, 2], window_size=2,
                                               patch_size=2)),
])
def test_a_multi_stage_swin_derives_a_track_before_any_training(tiny_track, ref, kwargs):
    """The probe of a derived track (forward, graph, the group checks at the floor: before any training)
    accepts a two-stage Swin."""
    from harness.tracks import derive_track

    track, note = derive_track(tiny_track, ref, kwargs=kwargs)
    assert "input size 8px" in note and track.model.kwargs == kwargs


SWINV2 = dict(embed_dim=16, depths=[1, 1], num_heads=[2, 4], window_size=2, patch_size=2)


def test_hf_swinv2_prunes_as_transformers_builds_a_narrower_one():
    """Swin V2: the norm after the reduction, cosine attention with a per-head logit scale and a per-head
    continuous position-bias MLP (kept whole, out of the trace); halved = Swin V2 at embed_dim 8."""
    torch.manual_seed(0)
    model = create_model("hf:swinv2", num_classes=10, in_chans=1, image_size=16, **SWINV2).eval()
    x = torch.rand(2, 1, 16, 16)
    big = {k: v.clone() for k, v in model.state_dict().items()}
    groups = _halved(model, x[:1])
    assert not [m.layer for g in groups for m in g.members if "continuous_position_bias_mlp" in m.layer]
    small = create_model("hf:swinv2", num_classes=10, in_chans=1, image_size=16,
                         **{**SWINV2, "embed_dim": 8}).eval()

    def blocks(name, dim):
        heads = SWINV2["num_heads"][int(re.search(r"layers\.(\d+)\.", name).group(1)) if "layers." in name else 0]
        if "downsample.reduction" in name and dim == 1:
            return 4
        if re.search(r"\.self\.(query|key|value)\.(weight|bias)$", name) and dim == 0:
            return heads
        return heads if re.search(r"attention\.output\.dense\.weight$", name) and dim == 1 else 1

    small.load_state_dict(_sliced(big, small.state_dict(), blocks))
    with torch.no_grad():
        torch.testing.assert_close(model(x).logits, small(x).logits, rtol=1e-4, atol=1e-5)
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in small.parameters())
