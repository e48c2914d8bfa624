"""Progressive pruning (``pruning.rounds > 1``): the per-layer MACs predictor against Torch-Pruning's own
counter on physically pruned copies, shape passes without oneDNN change nothing, and a run of N rounds
asks for scores N times, lands on the target exactly (minimal last round) and keeps the 10% floor."""

from __future__ import annotations

import copy

import pytest
import torch

from harness.methods import find_method
from harness.models import classifier_of, create_model
from harness.protocol.grouping import (PruneConfig, apply_plan, build_graph, count_layer_macs, count_macs_params,
                                       describe_groups, layer_channels, shape_pass)
from harness.protocol.pruning import macs_predictor, make_planner, predicted_step
from harness.protocol.run import Dense, RunSpec, prune_stage
from harness.tasks import task_for

MODELS = [("resnet18", 0.125, 16), ("vgg19", 0.125, 16), ("resnet50", 0.0625, 16), ("mobilenet_v3_small", 1, 32)]


def config_for(model):
    return PruneConfig(ignored_layers=[classifier_of(model)])


def setup(name, width, size):
    torch.manual_seed(0)
    if name == "mobilenet_v3_small":  # depthwise convs, squeeze-excitation, hardswish
        import torchvision
        model = torchvision.models.mobilenet_v3_small(num_classes=10).eval()
    else:
        model = create_model(name, num_classes=10, in_chans=3, image_size=size, width=width).eval()
    example = torch.randn(1, 3, size, size)
    return model, example, describe_groups(model, example, config_for(model))


@pytest.mark.parametrize("name, width, size", MODELS)
def test_predicted_macs_match_the_counter_on_pruned_copies(name, width, size):
    """Independent reference: Torch-Pruning's op counter on the physically pruned model."""
    model, example, groups = setup(name, width, size)
    total, _, layers = count_layer_macs(model, example)
    scores = {g.id: torch.rand(g.n_channels, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
              for g in groups}
    planner = make_planner(groups, scores, {g.id: g.n_channels for g in groups}, "protected_global", 0.1, seed=0)
    predict = macs_predictor(model, layers, total, groups)
    for frac in (0.1, 0.4, 0.8):
        plan = planner.plan(int(frac * planner.t_max))
        pruned = copy.deepcopy(model)
        apply_plan(pruned, example, config_for(pruned), plan)
        measured, _ = count_macs_params(pruned, example)
        assert abs(predict(plan) - measured) <= 0.02 * measured, (frac, measured, predict(plan))


def test_shape_passes_without_onednn_change_nothing():
    model, example, groups = setup("resnet18", 0.125, 16)
    with torch.backends.mkldnn.flags(enabled=True):
        dg = describe_groups(model, example, config_for(model), build_graph(model, example, config_for(model)))
        macs = count_macs_params(model, example)
    assert [g.model_dump() for g in dg] == [g.model_dump() for g in groups]  # (setup traced under shape_pass)
    with shape_pass():
        assert count_macs_params(model, example) == macs
    assert torch.backends.mkldnn.enabled  # restored


def test_predicted_step_is_the_smallest_within_the_predictor():
    model, example, groups = setup("vgg19", 0.125, 16)
    total, _, layers = count_layer_macs(model, example)
    scores = {g.id: torch.arange(g.n_channels, dtype=torch.float64) for g in groups}
    planner = make_planner(groups, scores, {g.id: g.n_channels for g in groups}, "global", 0.1, seed=0)
    predict = macs_predictor(model, layers, total, groups)
    t = predicted_step(planner, predict, total / 2)
    assert predict(planner.plan(t)) <= total / 2 < predict(planner.plan(t - 1))


@pytest.mark.parametrize("rounds", [1, 3])
def test_rounds_score_each_round_and_land_on_the_target(tiny_track, rounds):
    track = tiny_track.model_copy(update={"pruning": tiny_track.pruning.model_copy(update={"rounds": rounds})})
    spec = RunSpec(track=track, method=find_method("magnitude_l2"), speedup=4, seed=0, runner="inprocess")
    task = task_for(track)
    base = task.base_model()
    model = copy.deepcopy(base.model)
    example = task.example_inputs()
    macs, params = count_macs_params(model, example)
    seen = []
    pruned = prune_stage(spec, task, model, example, Dense(macs, params, layer_channels(model)),
                          lambda stage, done, total, **info: seen.append((done, total, info["speedup"])))
    assert [(d, t) for d, t, _ in seen] == [(r + 1, rounds) for r in range(rounds)]
    for r, (_, _, s) in enumerate(seen[:-1]):  # intermediate rounds near their share of the target (log-spaced)
        assert 4 ** ((r + 1) / rounds) * 0.9 <= s <= 4 ** ((r + 1) / rounds) * 1.25
    assert macs / pruned.macs >= 4 and count_macs_params(pruned.model, example)[0] == pruned.macs
    after = layer_channels(pruned.model)
    assert min(after[g] / c for g, c in pruned.base_channels.items() if g in after) >= 0.1
    assert pruned.model is model  # pruned in place, through one graph (no copy of the model)
