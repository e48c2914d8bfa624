"""Prune adapters of timm's MLP-Mixer, PVTv2 and MobileViT and torchvision's ShuffleNetV2, proved as
tests/test_hf_models.py proves transformers' and timm's attention: every group pruned to the first half of each
of its slices through the harness must give the model the library builds with half the widths, loaded with the
big model's weights sliced by hand - the same logits, the same parameter count. ShuffleNetV2's constructor ties
its hidden widths to its stage widths (which stay whole), so its reference is the original model with the
weights that read every removed channel zeroed by hand.
"""

from __future__ import annotations

import re

import pytest
import torch

from harness.models import prune_config_of
from harness.protocol.grouping import Unprunable
from test_hf_models import _halved, _sliced

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

MIXER = dict(patch_size=2, num_blocks=2, embed_dim=16, mlp_ratio=(0.5, 4.0))


def _mixer(embed_dim: int):
    from timm.models.mlp_mixer import MlpMixer

    return MlpMixer(num_classes=10, img_size=8, in_chans=1, **{**MIXER, "embed_dim": embed_dim}).eval()


def test_mixer_prunes_its_token_mlps_hidden_width_and_never_the_patches():
    """MLP-Mixer halved = timm's MlpMixer at half the embedding width (token hidden 8 -> 4, channel hidden
    64 -> 32, embedding 16 -> 8); the token MLPs keep the 16 patches at their inputs and outputs."""
    torch.manual_seed(0)
    model = _mixer(16)
    x = torch.rand(2, 1, 8, 8)
    big = {k: v.clone() for k, v in model.state_dict().items()}
    groups = _halved(model, x[:1])
    assert sorted(g.root for g in groups if "mlp_tokens" in g.root) == ["blocks.0.mlp_tokens.fc1",
                                                                         "blocks.1.mlp_tokens.fc1"]
    assert not [m.layer for g in groups for m in g.members if m.layer.endswith("mlp_tokens.fc2") and m.dim == "out"]
    small = _mixer(8)
    small.load_state_dict(_sliced(big, small.state_dict(), lambda name, dim: 1))
    with torch.no_grad():
        torch.testing.assert_close(model(x), small(x), rtol=1e-4, atol=1e-5)
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in small.parameters())
    assert all(b.mlp_tokens.fc1.in_features == b.mlp_tokens.fc2.out_features == 16 for b in model.blocks)



def test_a_gated_mixer_keeps_its_gated_hidden_widths_and_prunes_the_embedding():
    """gMixer (GluMlp: fc1's outputs split in a value and a gate half): only the embedding width is pruned.
    Halved = timm's gMixer at embed_dim 8 with mlp_ratio doubled, so its hidden widths are the big model's."""
    from timm.layers import GluMlp
    from timm.models.mlp_mixer import MlpMixer

    def gmixer(dim: int, ratio: tuple):
        return MlpMixer(num_classes=10, img_size=8, in_chans=1, patch_size=2, num_blocks=2, embed_dim=dim,
                        mlp_ratio=ratio, mlp_layer=GluMlp, act_layer=torch.nn.SiLU).eval()

    torch.manual_seed(0)
    model = gmixer(16, (1.0, 4.0))
    x = torch.rand(2, 1, 8, 8)
    big = {k: v.clone() for k, v in model.state_dict().items()}
    assert [g.root for g in _halved(model, x[:1])] == ["blocks.1.mlp_channels.fc2"]
    small = gmixer(8, (2.0, 8.0))
    small.load_state_dict(_sliced(big, small.state_dict(), lambda name, dim: 1))
    with torch.no_grad():
        torch.testing.assert_close(model(x), small(x), rtol=1e-4, atol=1e-5)
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in small.parameters())

def test_resmlp_is_refused_in_one_line_naming_its_token_layer():
    from timm.models.mlp_mixer import Affine, MlpMixer, ResBlock

    model = MlpMixer(num_classes=10, img_size=8, in_chans=1, patch_size=4, num_blocks=1, embed_dim=16,
                     block_layer=ResBlock, norm_layer=Affine, mlp_ratio=4)
    with pytest.raises(Unprunable) as e:
        prune_config_of(model)
    text = str(e.value)
    assert text.startswith("cannot prune MlpMixer at layer 'blocks.0.linear_tokens'") and "\n" not in text


PVT = dict(depths=(1, 1, 1, 1), embed_dims=(8, 16, 16, 32), num_heads=(1, 2, 2, 4))


def _pvt(mlp_ratio: float):
    from timm.models.pvt_v2 import PyramidVisionTransformerV2

    return PyramidVisionTransformerV2(num_classes=10, in_chans=1, mlp_ratios=(mlp_ratio,) * 4, **PVT).eval()


def test_pvt_v2_prunes_its_mlps_hidden_widths_through_the_depthwise_conv():
    """PVTv2's attention reshapes its output by its input width (as CaiT's and EVA's do), so only the MLPs'
    hidden widths are pruned: fc1's outputs, the depthwise conv between (channels-first, after a transpose
    and a view) and fc2's inputs. Halved = timm's PVTv2 with mlp_ratios 2 instead of 4."""
    torch.manual_seed(0)
    model = _pvt(4.0)
    x = torch.rand(2, 1, 32, 32)
    big = {k: v.clone() for k, v in model.state_dict().items()}
    groups = _halved(model, x[:1])
    assert len(groups) == 4 and all({m.layer.rpartition(".")[2] for m in g.members} == {"fc1", "dwconv", "fc2"}
                                    for g in groups)
    small = _pvt(2.0)
    small.load_state_dict(_sliced(big, small.state_dict(), lambda name, dim: 1))
    with torch.no_grad():
        torch.testing.assert_close(model(x), small(x), rtol=1e-4, atol=1e-5)
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in small.parameters())


def _mobilevit(c: int):
    """A MobileViT of timm's classes: a stem, an inverted residual, a MobileViT block (one ViT block on 2x2
    patches, 4 heads) and the final conv, every width a multiple of ``c``."""
    from timm.models.byobnet import ByobNet, ByoModelCfg
    from timm.models.mobilevit import _inverted_residual_block, _mobilevit_block

    cfg = ByoModelCfg(blocks=(_inverted_residual_block(d=1, c=c, s=1, br=2.0),
                              _mobilevit_block(d=1, c=2 * c, s=2, transformer_dim=2 * c, transformer_depth=1,
                                               patch_size=2, br=2.0)),
                      stem_chs=c, stem_type="3x3", stem_pool="", downsample="", act_layer="silu", num_features=4 * c)
    return ByobNet(cfg, num_classes=10, in_chans=1).eval()


def test_mobilevit_prunes_as_timm_builds_a_narrower_one():
    """MobileViT (timm's ByobNet with a MobileViT block): convs, the unfold into patches, a ViT block with head
    slices of its qkv, the fold and the fusion conv over the concatenated shortcut. Halved = the same
    architecture at half every width (heads kept: half the head dim; the fusion conv's inputs: half of each
    part of the concatenation)."""
    torch.manual_seed(0)
    model = _mobilevit(16)
    x = torch.rand(2, 1, 16, 16)
    big = {k: v.clone() for k, v in model.state_dict().items()}
    _halved(model, x[:1])
    small = _mobilevit(8)

    def blocks(name, dim):
        if re.search(r"attn\.qkv\.(weight|bias)$", name) and dim == 0:
            return 3 * 4
        if re.search(r"conv_fusion\.conv\.weight$", name) and dim == 1:
            return 2  # [shortcut, block output]: the first half of each
        return 4 if re.search(r"attn\.proj\.weight$", name) and dim == 1 else 1

    small.load_state_dict(_sliced(big, small.state_dict(), blocks))
    with torch.no_grad():
        torch.testing.assert_close(model(x), small(x), rtol=1e-4, atol=1e-5)
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in small.parameters())
    attn = model.stages[1][1].transformer[0].attn
    assert attn.num_heads == 4 and attn.head_dim == 4 and attn.scale == 4 ** -0.5  # 32 -> 16 wide


def _shufflenet():
    from torchvision.models.shufflenetv2 import ShuffleNetV2

    model = ShuffleNetV2([2, 2, 2], [8, 16, 32, 64, 32], num_classes=10).eval()
    with torch.no_grad():  # trained-looking BatchNorms: every channel matters
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5), m.bias.uniform_(-0.5, 0.5)
                m.running_mean.uniform_(-0.2, 0.2), m.running_var.uniform_(0.5, 1.5)
    return model


def test_shufflenet_v2_keeps_its_shuffled_widths_and_prunes_the_rest_as_removing_channels_does():
    """ShuffleNetV2: the stage widths (shuffled at every block) are kept; the stem, every branch2's hidden width
    and conv5 are pruned. Reference: removing a channel equals zeroing the weights that read it - the original
    model with those columns zeroed by hand (the second half of every pruned width) gives the same logits."""
    import copy

    torch.manual_seed(0)
    model = _shufflenet()
    reference = copy.deepcopy(model)
    x = torch.rand(2, 3, 32, 32)
    groups = _halved(model, x[:1])
    blocks = [b for stage in (reference.stage2, reference.stage3, reference.stage4) for b in stage]
    assert len(groups) == 2 + len(blocks)  # the stem, conv5 and one hidden width per block
    with torch.no_grad():
        for block in blocks:
            block.branch2[5].weight[:, block.branch2[0].out_channels // 2:] = 0
        reference.stage2[0].branch1[2].weight[:, 4:] = 0
        reference.stage2[0].branch2[0].weight[:, 4:] = 0
        reference.fc.weight[:, 16:] = 0
        torch.testing.assert_close(model(x), reference(x), rtol=1e-4, atol=1e-5)
    assert model.conv1[0].out_channels == 4 and model.conv5[0].out_channels == 16 and model.fc.in_features == 16
    for pruned, block in zip((b for s in (model.stage2, model.stage3, model.stage4) for b in s), blocks):
        assert pruned.branch2[0].out_channels == pruned.branch2[3].out_channels == block.branch2[0].out_channels // 2
        assert pruned.branch2[5].out_channels == block.branch2[5].out_channels  # a stage width: kept
