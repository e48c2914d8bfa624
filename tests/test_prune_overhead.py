"""The prune stage's own overhead, cut without changing what it computes:

- MACs are counted on the model itself (Torch-Pruning's hooks, a forward pass on meta tensors): equal to
  ``tp.utils.count_ops_and_params`` (a deep copy and a real pass) after every round of progressive
  pruning, per layer too, on a ResNet, a MobileNetV2 and a ViT; the final round's search probes
  weightless copies and still lands on the smallest step that reaches the target;
- the prune stage prunes in place through one graph and gives the same architecture, round for round,
  as the copy-and-count stage it replaces (rebuilt here from Torch-Pruning's counter and deep copies);
- a method process that exits promptly is shut down without a fixed sleep (counted, not timed), and one
  begun on a thread is waited for where it is first needed, or stopped when the stage fails first.
"""

from __future__ import annotations

import copy
import time

import pytest
import torch
import torch_pruning as tp

from harness.methods import find_method
from harness.models import classifier_of, create_model, prune_config_of
from harness.protocol.grouping import (PruneConfig, apply_plan, build_graph, count_layer_macs, count_macs_params,
                                       describe_groups, layer_channels)
from harness.protocol.pruning import macs_predictor, make_planner, predicted_step, prune_round
from harness.protocol.run import Dense, RunSpec, _prune_stage
from harness.runners.subprocess_runner import SubprocessClient
from harness.tasks import task_for


def tp_counts(model, example):
    """Torch-Pruning's own counter (a deep copy, a real forward pass), per layer by name."""
    macs, params, per_module, _ = tp.utils.count_ops_and_params(model, example, layer_wise=True)
    names = {m: n for n, m in model.named_modules()}
    return float(macs), int(params), {names[m]: float(v) for m, v in per_module.items() if v and m in names}


def tiny(name):
    torch.manual_seed(0)
    if name == "mobilenet_v2":  # inverted residuals, depthwise convs, ReLU6
        import torchvision
        return torchvision.models.mobilenet_v2(num_classes=10, width_mult=0.25).eval(), 32
    if name == "vit":  # timm's ViT (narrow): fused qkv head groups, bare pos_embed / cls_token, the fix-up
        from timm.models.vision_transformer import VisionTransformer
        return VisionTransformer(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=2,
                                 num_classes=10).eval(), 32
    return create_model(name, num_classes=10, in_chans=3, image_size=16, width=0.125).eval(), 16


def config_for(model):
    return prune_config_of(model).merged(PruneConfig(ignored_layers=[classifier_of(model)]))


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2", "vit"])
def test_counts_equal_torch_pruning_after_every_round(name):
    model, size = tiny(name)
    example = torch.randn(1, 3, size, size)
    base_macs, _, layers = count_layer_macs(model, example)
    assert (base_macs, layers) == (tp_counts(model, example)[0], tp_counts(model, example)[2])
    graph = build_graph(model, example, config_for(model))
    base_channels, macs, rounds, target = None, base_macs, 2, 2.0  # a progressive round, then the final search
    for r in range(rounds):
        groups = describe_groups(model, example, config_for(model), graph)
        base_channels = base_channels or {g.id: g.n_channels for g in groups}
        gen = torch.Generator().manual_seed(r)
        scores = {g.id: torch.rand(g.n_channels, generator=gen, dtype=torch.float64) for g in groups}
        planner = make_planner(groups, scores, base_channels, "protected_global", 0.1, seed=0, round_=r)
        step_target = target ** ((r + 1) / rounds)
        found, layers = prune_round(model, example, config_for, planner, base_macs, macs, step_target,
                                    r == rounds - 1, layers, graph)
        assert found.model is model  # every round in place, the final one included
        macs = found.macs
        ref_macs, ref_params, ref_layers = tp_counts(model, example)
        assert (found.macs, found.params) == (ref_macs, ref_params), r
        if layers is not None:  # (the final round returns no per-layer counts)
            assert layers == ref_layers, r
    assert base_macs / macs >= target


def test_final_search_lands_on_the_smallest_step():
    """The search probes weightless copies; the step it applies is the smallest one whose physically
    pruned copy (real weights, Torch-Pruning's counter) reaches the target."""
    model, size = tiny("resnet18")
    example = torch.randn(1, 3, size, size)
    base_macs = count_macs_params(model, example)[0]
    groups = describe_groups(model, example, config_for(model))
    scores = {g.id: torch.rand(g.n_channels, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
              for g in groups}
    planner = make_planner(groups, scores, {g.id: g.n_channels for g in groups}, "protected_global", 0.1, seed=0)
    original = copy.deepcopy(model)
    found, _ = prune_round(model, example, config_for, planner, base_macs, base_macs, 3.0, True,
                           count_layer_macs(model, example)[2])

    def real(t):
        m = copy.deepcopy(original)
        apply_plan(m, example, config_for(m), planner.plan(t))
        return tp.utils.count_ops_and_params(m, example)[0]

    assert found.macs == real(found.t) and base_macs / found.macs >= 3.0
    assert base_macs / real(found.t - 1) < 3.0
    assert layer_channels(found.model) == layer_channels(model)


def reference_stage(track, task, model, example, speedup, seed):
    """The prune stage as it was: each round prunes a deep copy (fresh graph), counts with Torch-Pruning's
    counter, and the final round searches on real deep copies step by step (the smallest step)."""
    from harness.protocol.observations import collect
    method = find_method("magnitude_l2")
    from harness.runners.inprocess import InProcessClient
    rounds, base_macs = track.pruning.rounds, tp_counts(model, example)[0]
    macs, layers, base_channels, archs = base_macs, tp_counts(model, example)[2], {}, []
    with InProcessClient(method, {}, seed) as client:
        for r in range(rounds):
            groups = describe_groups(model, example, task.prune_config(model))
            base_channels = base_channels or {g.id: g.n_channels for g in groups}
            obs = collect(method.manifest.observations, model, groups, task.calibration_batches(seed), task.loss,
                          seed=seed, calibration=track.calibration)
            planner = make_planner(groups, client.score(r, groups, obs), base_channels, track.pruning.strategy,
                                   track.pruning.min_channel_fraction, seed=seed, round_=r)
            goal = base_macs / speedup ** ((r + 1) / rounds)
            t = predicted_step(planner, macs_predictor(model, layers, macs, groups), goal)
            if r == rounds - 1:  # bisection: the smallest step whose pruned copy reaches the target
                def pruned(step):
                    m = copy.deepcopy(model)
                    apply_plan(m, example, task.prune_config(m), planner.plan(step))
                    return m, tp_counts(m, example)[0]
                lo, hi = 0, planner.t_max
                while hi - lo > 1:
                    mid = (lo + hi) // 2
                    lo, hi = (lo, mid) if pruned(mid)[1] <= goal * (1 + 1e-9) else (mid, hi)
                model = pruned(hi)[0]
            else:
                model = copy.deepcopy(model)
                apply_plan(model, example, task.prune_config(model), planner.plan(t))
            task.after_prune(model)
            macs, _, layers = tp_counts(model, example)
            archs.append(layer_channels(model))
    return archs, macs


def test_progressive_stage_gives_the_same_architecture_round_for_round(tiny_track):
    track = tiny_track.model_copy(update={"pruning": tiny_track.pruning.model_copy(update={"rounds": 3})})
    task = task_for(track)
    base = task.base_model()
    example = task.example_inputs()
    spec = RunSpec(track=track, method=find_method("magnitude_l2"), speedup=4, seed=1, runner="inprocess")
    seen = []
    original_after = task.after_prune
    task.after_prune = lambda m: (original_after(m), seen.append(layer_channels(m)))
    model = copy.deepcopy(base.model)
    macs, params = count_macs_params(model, example)
    pruned = _prune_stage(spec, task, model, example, Dense(macs, params, layer_channels(model)), None)
    task.after_prune = original_after
    archs, ref_macs = reference_stage(track, task, copy.deepcopy(base.model), example, 4, seed=1)
    assert seen == archs
    assert pruned.macs == ref_macs


def test_a_promptly_exiting_method_is_shut_down_without_sleeping(monkeypatch):
    sleeps = []
    real_sleep = time.sleep
    monkeypatch.setattr(time, "sleep", lambda s: (sleeps.append(s), real_sleep(s)))
    client = SubprocessClient(find_method("magnitude_l2"), {}, 0)
    client.start()
    proc = client._proc
    client.close()
    assert sleeps == []  # waited on the process itself
    assert proc.returncode == 0  # it exited on its own (the shutdown message), it was not killed


def test_a_method_begun_on_a_thread_is_waited_for_once_or_stopped(monkeypatch):
    client = SubprocessClient(find_method("magnitude_l2"), {}, 0).begin()
    client.ready()
    assert client._conn is not None and client.start_seconds > 0 and client.start_wait_seconds > 0
    client.close()
    # the stage failed before it needed the method: closing stops the start and the process
    client = SubprocessClient(find_method("magnitude_l2"), {}, 0)
    with pytest.raises(RuntimeError, match="stage failed"):
        with client.begin():
            raise RuntimeError("stage failed")
    assert client._proc.poll() is not None and not client.exchange.exists()


def test_counting_leaves_the_model_as_it_was():
    """What a forward caches on its module (a detection head's anchors) is put back after the meta pass,
    and the counter's hooks and attributes are gone: the model runs as before, and its copy counts the same."""

    class Caching(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 3)
            self.anchors = None

        def forward(self, x):
            y = self.conv(x)
            if self.anchors is None or self.anchors.shape != y.shape[2:]:
                self.anchors = torch.zeros(y.shape[2:], device=y.device)
            return y + self.anchors

    model, x = Caching().train(), torch.randn(1, 3, 8, 8)
    before = {m: dict(m.__dict__) for m in model.modules()}
    assert count_macs_params(model, x) == tuple(tp_counts(model, x)[:2])  # (the meta pass cached anchors)
    assert {m: dict(m.__dict__) for m in model.modules()} == before
    assert model.anchors is None and model.training and not model.conv._forward_hooks
    assert model(x).shape == (1, 4, 6, 6)
