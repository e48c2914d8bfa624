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


def test_a_multi_stage_swin_passes_the_group_checks_at_the_floor():
    torch.manual_seed(0)
    model = create_model("hf:swin", num_classes=10, in_chans=1, image_size=16, **SWIN).eval()
    x = torch.rand(1, 1, 16, 16)
    config = _config(model)
    check_groups(model, x, config, describe_groups(model, x, config), 0.1)


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


def test_hf_architectures_kwarg_picks_another_classifier_class():
    from transformers import DeiTForImageClassificationWithTeacher

    model = create_model("hf:deit", num_classes=10, in_chans=1, image_size=8,
                         architectures=["DeiTForImageClassificationWithTeacher"], **DEIT)
    assert type(model) is DeiTForImageClassificationWithTeacher


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
