"""Torch-Pruning's group walks: bounded, and timm's ReXNet pruned correctly.

- A channel slice that Torch-Pruning reads at the wrong width (ReXNet's partial residual,
  ``cat([y[:, :c] + x, y[:, c:]])``) sends its walk for one group to ever new channel positions: 68, 173 and 452
  steps for 1-3 such blocks of ``odd_models:partial_residuals``, 47,812 steps (277 s) for 4, hours for
  ``timm:rexnet_100``. Every walk the harness starts is bounded (``WALK_STEPS_PER_DEPENDENCY``) and refused in
  one line naming the layer, before any training.
- ReXNet has a prune adapter (:mod:`harness.models.rexnet`). The reference for "pruned correctly" is the model
  sliced by hand from ReXNet's structure: a block with a shortcut adds its input to its first channels, so
  channel ``c`` of a run of such blocks is one channel from the block that starts the run to the layer after
  its end; every other group keeps its first half. Same logits, same parameter count.
"""

from __future__ import annotations

import copy
import math
import time
from pathlib import Path

import pytest
import torch
from torch import nn

import harness.protocol.grouping as grouping
from harness.errors import HarnessError
from harness.models import classifier_of, create_model, prune_config_of
from harness.protocol.grouping import (PruneConfig, Unprunable, apply_plan, check_groups, describe_groups,
                                       floor_plan)
from harness.tracks import derive_track

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
FIXTURES = Path(__file__).resolve().parent / "fixtures"


@pytest.fixture
def odd_models(monkeypatch):
    monkeypatch.syspath_prepend(str(FIXTURES))
    import odd_models
    odd_models.CALLS.clear()
    return odd_models


def _config(model):
    return prune_config_of(model).merged(PruneConfig(ignored_layers=[classifier_of(model)]))


def _walks(model, x, steps_per_dependency, monkeypatch) -> str:
    """``"ok"`` when every group walk of ``model`` ends within ``steps_per_dependency``, else the refusal."""
    monkeypatch.setattr(grouping, "WALK_STEPS_PER_DEPENDENCY", steps_per_dependency)
    try:
        describe_groups(model, x, _config(model))
    except Unprunable as e:
        return str(e)
    return "ok"


def test_the_bound_lies_between_real_walks_and_a_runaway_one(odd_models, monkeypatch):
    """A ResNet's and a DenseNet's walks (concatenations) end within 1 step per dependency of their graph; three
    partial-residual blocks already need more than 8 (452 steps for 56 dependencies). The default, 4, is
    between them."""
    assert 1 < grouping.WALK_STEPS_PER_DEPENDENCY < 8
    for ref, size in (("resnet18", 8), ("zoo_factories:densenet_tiny", 32)):
        model = create_model(ref, num_classes=10, in_chans=1, image_size=size).eval()
        assert _walks(model, torch.rand(1, 1, size, size), 1, monkeypatch) == "ok", ref
    runaway = odd_models.partial_residuals(10, 1, 8, blocks=3).eval()
    refusal = _walks(runaway, torch.rand(1, 1, 8, 8), 8, monkeypatch)
    assert "walk to collect the layers pruned with it took more than 448 steps" in refusal, refusal


def test_a_walk_that_never_ends_is_refused_before_training_in_one_line(tiny_track, odd_models):
    """Eight partial-residual blocks (unbounded: far beyond 4 blocks' 277 s): the input-size probe refuses the
    model in one line naming the layer, after two sizes, in seconds."""
    t = time.perf_counter()
    with pytest.raises(Unprunable) as e:
        derive_track(tiny_track, "odd_models:partial_residuals")
    line, took = str(e.value), time.perf_counter() - t
    assert line.startswith("cannot prune Sequential at layer '8.conv': Torch-Pruning's walk to collect the layers "
                           "pruned with it took more than") and "\n" not in line
    assert odd_models.CALLS["partial_residuals"] <= 2 and took < 30, (odd_models.CALLS, took)


# --------------------------------------------------------------------------- ReXNet

REXNET = dict(width_mult=0.5, depth_mult=0.35)  # 9 blocks: two runs of blocks with a shortcut (4-6, 8)


def _half(n: int) -> list[int]:
    return list(range(math.ceil(n / 2)))


def _kept_by_hand(model) -> tuple[dict, dict]:
    """``({block index: kept output channels}, {block index: kept input channels})`` from ReXNet's structure:
    a run of blocks with a shortcut and the block before it share their channel ``c``, so the run keeps the
    first half of its last block's outputs everywhere; a block outside a run keeps the first half of its own."""
    blocks = list(model.features)[:-1]  # the last feature is the 1x1 conv before the head
    out: dict[int, list[int]] = {}
    i = len(blocks) - 1
    while i >= 0:
        end = i
        while i > 0 and blocks[i].use_shortcut:
            i -= 1  # i: the block that starts the run
        keep = len(_half(blocks[end].out_channels))
        for b in range(i, end + 1):
            out[b] = list(range(min(blocks[b].out_channels, keep)))
        i -= 1
    stem = _half(model.stem.conv.out_channels)
    ins = {b: (out[b - 1] if b else stem) for b in range(len(blocks))}
    return out, ins


def _slice_conv(conv: nn.Conv2d, out_idx, in_idx) -> None:
    w = conv.weight.data[out_idx]
    if conv.groups == 1:
        w = w[:, in_idx]
    else:  # depthwise: one input per output
        conv.groups = len(out_idx)
    conv.weight = nn.Parameter(w.clone())
    if conv.bias is not None:
        conv.bias = nn.Parameter(conv.bias.data[out_idx].clone())
    conv.out_channels, conv.in_channels = len(out_idx), (len(in_idx) if conv.groups == 1 else len(out_idx))


def _slice_bn(bn: nn.BatchNorm2d, idx) -> None:
    bn.weight, bn.bias = nn.Parameter(bn.weight.data[idx].clone()), nn.Parameter(bn.bias.data[idx].clone())
    bn.running_mean, bn.running_var = bn.running_mean[idx].clone(), bn.running_var[idx].clone()
    bn.num_features = len(idx)


def _reference(model) -> nn.Module:
    """``model`` cut by hand to what :func:`_kept_by_hand` keeps, every other width halved."""
    ref = copy.deepcopy(model)
    out, ins = _kept_by_hand(ref)
    stem = ins[0]
    _slice_conv(ref.stem.conv, stem, list(range(ref.stem.conv.in_channels)))
    _slice_bn(ref.stem.bn, stem)
    for b, block in enumerate(list(ref.features)[:-1]):
        x_in = ins[b]
        if block.conv_exp is not None:
            mid = _half(block.conv_exp.conv.out_channels)
            _slice_conv(block.conv_exp.conv, mid, x_in)
            _slice_bn(block.conv_exp.bn, mid)
        else:
            mid = x_in
        _slice_conv(block.conv_dw.conv, mid, mid)
        _slice_bn(block.conv_dw.bn, mid)
        if block.se is not None:
            rd = _half(block.se.fc1.out_channels)
            _slice_conv(block.se.fc1, rd, mid)
            _slice_bn(block.se.bn, rd)
            _slice_conv(block.se.fc2, mid, rd)
        _slice_conv(block.conv_pwl.conv, out[b], mid)
        _slice_bn(block.conv_pwl.bn, out[b])
        block.in_channels, block.out_channels = len(x_in), len(out[b])
    last, final = ref.features[-1], _half(ref.features[-1].conv.out_channels)
    _slice_conv(last.conv, final, out[len(ref.features) - 2])
    _slice_bn(last.bn, final)
    ref.head.fc.weight = nn.Parameter(ref.head.fc.weight.data[:, final].clone())
    ref.head.fc.in_features = len(final)
    return ref


def test_rexnet_prunes_as_rexnet_cut_by_hand():
    """Every group to half: the same logits and parameter count as ReXNet cut by hand from its structure; a
    copy pruned to the floor passes the harness's group checks."""
    torch.manual_seed(0)
    model = create_model("timm:rexnet_100", num_classes=10, in_chans=3, image_size=32, **REXNET).eval()
    for m in model.modules():  # statistics that are not the identity, so a misplaced channel shows
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5), m.running_var.uniform_(0.5, 1.5)
    assert [b.use_shortcut for b in list(model.features)[:-1]] == [False] * 4 + [True] * 3 + [False, True]
    x = torch.rand(2, 3, 32, 32)
    config = _config(model)
    groups = describe_groups(model, x[:1], config)
    check_groups(model, x[:1], config, groups)
    ref = _reference(model)
    apply_plan(model, x[:1], config, floor_plan(groups, 0.5))
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref(x), rtol=1e-4, atol=1e-5)
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in ref.parameters())
    assert [b.in_channels for b in list(model.features)[:-1]] == [b.in_channels for b in list(ref.features)[:-1]]


def test_rexnet_100_prunes_within_the_bound():
    """The full-size ReXNet-1.0 (its walk never ended before the adapter): its groups pass the harness's checks."""
    model = create_model("timm:rexnet_100", num_classes=10, in_chans=1, image_size=8).eval()
    x = torch.rand(1, 1, 8, 8)
    config = _config(model)
    check_groups(model, x, config, describe_groups(model, x, config))


def test_rexnet_without_its_adapter_is_refused_not_hung(monkeypatch):
    """The bound alone (no adapter): ReXNet-1.0 is refused in one line naming a layer, in seconds."""
    from harness.models import PRUNE_ADAPTERS

    monkeypatch.setattr(PRUNE_ADAPTERS, "_entries", {k: v for k, v in PRUNE_ADAPTERS._entries.items()
                                                     if "rexnet" not in k})
    model = create_model("timm:rexnet_100", num_classes=10, in_chans=1, image_size=8).eval()
    t = time.perf_counter()
    with pytest.raises(HarnessError) as e:
        x = torch.rand(1, 1, 8, 8)
        config = _config(model)
        check_groups(model, x, config, describe_groups(model, x, config))
    assert str(e.value).startswith("cannot prune RexNet at layer 'features.") and "\n" not in str(e.value)
    assert time.perf_counter() - t < 60
