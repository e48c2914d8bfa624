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
                                       describe_groups, layer_channels, meta_count_exact)
from harness.protocol.pruning import (ProbeMismatch, macs_predictor, make_planner, materialize, predicted_step,
                                      probe_macs, prune_round, search_speedup)
from harness.protocol.run import Dense, RunSpec, prune_stage
from harness.runners.subprocess_runner import SubprocessClient
from harness.tasks import task_for
from specs.messages import Group, Member


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
    base_macs, _, layers = count_layer_macs(model, example, meta=True)
    assert (base_macs, layers) == (tp_counts(model, example)[0], tp_counts(model, example)[2])
    graph = build_graph(model, example, config_for(model))
    assert meta_count_exact(model, example)[3]
    base_channels, macs, rounds, target = None, base_macs, 2, 2.0  # a progressive round, then the final search
    for r in range(rounds):
        groups = describe_groups(model, example, config_for(model), graph)
        base_channels = base_channels or {g.id: g.n_channels for g in groups}
        gen = torch.Generator().manual_seed(r)
        scores = {g.id: torch.rand(g.n_channels, generator=gen, dtype=torch.float64) for g in groups}
        planner = make_planner(groups, scores, base_channels, "protected_global", 0.1, seed=0, round_=r)
        step_target = target ** ((r + 1) / rounds)
        found, layers = prune_round(model, example, config_for, planner, base_macs, macs, step_target,
                                    r == rounds - 1, layers, graph, meta=True)
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
                           count_layer_macs(model, example)[2], meta=True)

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
    pruned = prune_stage(spec, task, model, example, Dense.of(model, example), None)
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


def test_a_methods_process_keeps_its_freed_temporaries(make_method):
    """A method's temporaries are about the size of the weights it reads, every request. glibc's defaults hand
    them back to the kernel when they are freed, and the next request faults them in again, zeroed (4,000-18,000
    page faults per ResNet-18 score request, a third of the round trip: benchmarks/prune_vs_torch_pruning.py);
    the runners set its malloc so that the heap keeps them. What the method's process sees (the docker runner's
    container: tests/test_docker_runner.py)."""
    method = make_method("""
        import os
        import torch
        from specs.sdk import ImportanceMethod
        class Method(ImportanceMethod):
            def score_group(self, group, obs):
                return torch.tensor([float(os.environ[k]) for k in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")])
        """)
    group = Group(id="g", root="fc", n_channels=2, members=[Member(layer="fc", module_type="Linear", kind="linear",
                                                                   dim="out", idxs=[0, 1], root_idxs=[0, 1],
                                                                   weight="fc.weight")])
    with SubprocessClient(method, {}, 0) as client:
        seen = client.score(0, [group], {"weights": {"fc.weight": torch.ones(2, 3)}})["g"].tolist()
    assert seen == [32 * 2**20, 256 * 2**20]


def test_a_method_ends_without_the_interpreters_teardown(make_method, tmp_path):
    """After the shutdown message the method's process ends at once (``os._exit`` once its streams are
    flushed): the teardown the harness would wait for (seconds with torch loaded, on a busy machine) is
    skipped, so an ``atexit`` handler does not run."""
    marker = tmp_path / "teardown-ran"
    method = make_method(f"""
        import atexit, pathlib
        from specs.sdk import ImportanceMethod
        atexit.register(lambda: pathlib.Path({str(marker)!r}).write_text("ran"))
        class Method(ImportanceMethod):
            def score_group(self, group, obs):
                raise NotImplementedError
        """)
    client = SubprocessClient(method, {}, 0)
    client.start()
    proc = client._proc
    client.close()
    assert proc.returncode == 0 and not marker.exists()


def test_what_a_method_started_ends_with_it_and_its_exit_code_is_reported(make_method, tmp_path):
    """A child the method started (a pool worker, a subprocess) does not outlive the method's process, and a
    ``sys.exit(7)`` in method code is reported with its code (it ends the process at once, like a shutdown)."""
    import os

    from harness.errors import MethodFailure
    pid_file = tmp_path / "child.pid"
    method = make_method(f"""
        import pathlib, subprocess
        from specs.sdk import ImportanceMethod
        child = subprocess.Popen(["sleep", "300"])
        pathlib.Path({str(pid_file)!r}).write_text(str(child.pid))
        class Method(ImportanceMethod):
            def score_group(self, group, obs):
                raise NotImplementedError
        """)
    client = SubprocessClient(method, {}, 0)
    client.start()
    client.close()
    child = int(pid_file.read_text())
    for _ in range(200):  # (killed already: at most the time its new parent takes to collect it)
        try:
            state = open(f"/proc/{child}/stat").read().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            break
        if state == "Z":
            break
        time.sleep(0.05)
    else:
        os.kill(child, 9)
        pytest.fail("the method's child outlived it")
    exiting = make_method("""
        import sys
        from specs.sdk import ImportanceMethod
        class Method(ImportanceMethod):
            def score_group(self, group, obs):
                sys.exit(7)
        """)
    from harness.protocol.observations import collect
    model, x = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Conv2d(4, 2, 3)), torch.randn(1, 3, 8, 8)
    groups = describe_groups(model, x, PruneConfig())
    with pytest.raises(MethodFailure, match="exit code 7"):
        with SubprocessClient(exiting, {}, 0) as client:
            client.score(0, groups, collect(["weights"], model, groups, []))


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
    assert count_macs_params(model, x, meta=True) == tuple(tp_counts(model, x)[:2])  # (a copy cached anchors)
    assert {m: dict(m.__dict__) for m in model.modules()} == before
    assert model.anchors is None and model.training and not model.conv._forward_hooks
    assert model(x).shape == (1, 4, 6, 6)


def test_more_than_1024_open_descriptors_neither_break_shutdown_nor_hide_a_crash(make_method):
    """The exit is waited for with ``poll`` (``select`` refuses descriptors >= 1024): shutdown ends the
    process, and a method that crashes is a MethodFailure, with 1100 more files open in the harness."""
    import os
    import resource

    from harness.errors import MethodFailure
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 1300:
        if hard != resource.RLIM_INFINITY and hard < 1300:
            pytest.skip("this machine allows fewer than 1300 open files")
        resource.setrlimit(resource.RLIMIT_NOFILE, (1300, hard))
    held = [open(os.devnull) for _ in range(1100)]
    try:
        client = SubprocessClient(find_method("magnitude_l2"), {}, 0)
        client.start()
        proc = client._proc
        client.close()
        assert proc.poll() is not None
        crash = make_method("""
            import os
            from specs.sdk import ImportanceMethod
            os._exit(3)
            class Method(ImportanceMethod):
                pass
            """)
        with pytest.raises(MethodFailure, match="exit code 3"):
            with SubprocessClient(crash, {}, 0):
                pass
    finally:
        for f in held:
            f.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


class DeviceBranch(torch.nn.Module):
    """Another path on meta tensors (a kernel only for real devices): the meta count misses ``b``."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = (torch.nn.Conv2d(c, 16, 3, padding=1) for c in (3, 16, 16))
        self.fc = torch.nn.Linear(16, 10)

    def forward(self, x):
        y = torch.relu(self.a(x))
        if y.device.type in ("cpu", "cuda"):
            y = torch.relu(self.b(y))
        return self.fc(torch.relu(self.c(y)).mean((2, 3)))


class TryExcept(DeviceBranch):
    """A fast path that fails on meta tensors (``float()`` of one), a slower one taken instead."""

    def forward(self, x):
        y = torch.relu(self.a(x))
        try:
            float(y.mean())
            y = self.b(y)
        except Exception:
            y = self.c(self.b(y))
        return self.fc(y.mean((2, 3)))


class CoupledOnlyForReal(DeviceBranch):
    """The same modules and shapes on meta tensors (equal counts), but ``a`` and ``b`` are summed only in
    a real pass: the graph traced on meta tensors has other groups."""

    def __init__(self):
        super().__init__()
        self.b = torch.nn.Conv2d(3, 16, 3, padding=1)

    def forward(self, x):
        ya, yb = self.a(x), self.b(x)
        y = ya + yb if x.device.type != "meta" else ya
        return self.fc(torch.relu(self.c(y)).mean((2, 3)))


def head_config(model):
    return PruneConfig(ignored_layers=[model.fc])


def smallest_step_check(model, example, planner, found, target):
    """Torch-Pruning's counter on real deep copies: step ``found.t`` reaches ``target``, the step before does not."""
    def real(t):
        m = copy.deepcopy(model)
        apply_plan(m, example, head_config(m), planner.plan(t))
        return tp.utils.count_ops_and_params(m, example)[0]
    base = tp.utils.count_ops_and_params(model, example)[0]
    assert found.macs == real(found.t) and base / found.macs >= target > base / real(found.t - 1)


@pytest.mark.parametrize("cls", [DeviceBranch, TryExcept, CoupledOnlyForReal])
def test_a_forward_that_takes_another_path_on_meta_tensors_is_counted_for_real(cls):
    """The meta count is checked once against Torch-Pruning's (MACs module by module), and the search's first
    weightless probe against the model's groups: where either differs, probes and counts use real copies, so
    the search lands on the smallest step by Torch-Pruning's counter, in place (the stage's final round) too."""
    torch.manual_seed(0)
    model, example = cls().eval(), torch.randn(1, 3, 16, 16)
    macs, params, layers, exact = meta_count_exact(model, example)
    assert (macs, params, layers) == tp_counts(model, example)
    assert exact == (cls is CoupledOnlyForReal)  # (the same counts on meta tensors, other groups)
    # the stage reuses the run's dense count (Dense.of) instead of counting again: the same verdict
    assert meta_count_exact(model, example, (macs, params, layers)) == (macs, params, layers, exact)
    assert Dense.of(model, example).layer_macs == layers
    groups = describe_groups(model, example, head_config(model))
    planner = make_planner(groups, {g.id: torch.rand(g.n_channels, generator=torch.Generator().manual_seed(1))
                                    for g in groups}, {g.id: g.n_channels for g in groups}, "protected_global", 0.1, 0)
    original = copy.deepcopy(model)
    found = search_speedup(model, example, head_config, planner, macs, macs, 2.0)  # (meta checked here)
    smallest_step_check(original, example, planner, found, 2.0)
    found, _ = prune_round(model, example, head_config, planner, macs, macs, 2.0, True, layers, meta=exact)
    assert found.model is model
    smallest_step_check(original, example, planner, found, 2.0)


def test_a_probe_that_disagrees_with_the_model_is_a_recorded_failure():
    """A weightless probe whose groups were not checked measures other MACs than the model pruned by the same
    plan: materialize raises ProbeMismatch, which is no HarnessError (bad input, re-raised): evaluate records
    the run as failed and the sweep goes on."""
    from harness.errors import HarnessError
    torch.manual_seed(0)
    model, example = CoupledOnlyForReal().eval(), torch.randn(1, 3, 16, 16)
    groups = describe_groups(model, example, head_config(model))
    plan = make_planner(groups, {g.id: torch.linspace(0, 1, g.n_channels) for g in groups},
                        {g.id: g.n_channels for g in groups}, "protected_global", 0.1, 0).plan(10)
    assert probe_macs(model, example, head_config, plan, meta=True, groups=groups) is None  # (the check)
    unchecked = probe_macs(model, example, head_config, plan, meta=True)[0]
    assert unchecked != probe_macs(model, example, head_config, plan)[0]
    with pytest.raises(ProbeMismatch, match="weightless probe"):
        materialize(model, example, head_config, plan, 10, unchecked, 1, in_place=True, meta=True)
    assert not issubclass(ProbeMismatch, HarnessError)


class Lazy(torch.nn.Module):
    """State a forward leaves on its module: a buffer registered on first use, a per-size cache in a dict,
    and a ``train()`` that does more than set flags (freezes the parameters in eval)."""

    def __init__(self):
        super().__init__()
        self.conv, self.cache = torch.nn.Conv2d(3, 8, 3), {}

    def train(self, mode=True):
        super().train(mode)
        for p in self.parameters():
            p.requires_grad_(mode)
        return self

    def forward(self, x):
        y = self.conv(x)
        if not hasattr(self, "grid"):
            self.register_buffer("grid", torch.zeros(y.shape[-2:], device=y.device))
        key = tuple(y.shape[-2:])
        if key not in self.cache:
            self.cache[key] = torch.ones(key, device=y.device)
        return y * self.cache[key] + self.grid


def test_counting_on_meta_tensors_leaves_no_meta_tensor_and_no_side_effect_behind():
    """The meta count runs on a weightless copy: the model keeps its buffers, caches, parameters and flags
    (no meta tensor left for the next real forward or trace), and user hooks never see a meta tensor."""
    model, x = Lazy().train(), torch.randn(1, 3, 8, 8)
    assert count_macs_params(model, x, meta=True) == tuple(tp_counts(model, x)[:2])
    assert "grid" not in dict(model.named_buffers()) and model.cache == {}
    assert model.training and all(p.requires_grad for p in model.parameters())
    model(x)  # the model's own caches, real tensors
    assert meta_count_exact(model, x)[3]
    assert not any(t.is_meta for t in [*model.state_dict().values(), *model.cache.values()])
    build_graph(model, x, PruneConfig())  # traceable as before
    seen = []
    model.conv.register_forward_hook(lambda m, a, out: seen.append(out.device.type))
    assert count_macs_params(model, x, meta=True) == tuple(tp_counts(model, x)[:2])
    assert not meta_count_exact(model, x)[3] and set(seen) == {"cpu"}


def test_every_caller_of_the_prune_stage_passes_a_model_it_owns():
    """``prune_stage`` prunes its ``model`` in place (one-shot runs too): every call in the library and the
    benchmarks passes a deep copy, a model built there, or (a pass-through) its own ``model`` argument,
    whose callers are checked in turn."""
    import ast
    from pathlib import Path
    root = Path(__file__).resolve().parents[1]
    stages = {"prune_stage", "_prune_everywhere", "harness_stage"}  # (the last two pass their argument on)

    def owned(expr, assigned, line) -> bool:
        text = ast.unparse(expr)
        if "copy.deepcopy(" in text or "create_model(" in text or "build_model(" in text:
            return True
        before = [v for at, v in sorted(assigned.get(getattr(expr, "id", None), []), key=lambda a: a[0]) if at < line]
        return bool(before) and owned(before[-1], {}, line)  # the last assignment before the call

    calls = 0
    for path in [*root.glob("harness/**/*.py"), *root.glob("benchmarks/*.py")]:
        for fn in ast.walk(ast.parse(path.read_text())):
            if not isinstance(fn, ast.FunctionDef):
                continue
            assigned: dict[str, list] = {}
            for node in ast.walk(fn):
                if isinstance(node, ast.Assign):
                    for target in node.targets:
                        if isinstance(target, ast.Name):
                            assigned.setdefault(target.id, []).append((node.lineno, node.value))
            for node in ast.walk(fn):
                if isinstance(node, ast.Call) and getattr(node.func, "id", None) in stages and len(node.args) > 2:
                    calls += 1
                    model = node.args[2]
                    passes_on = fn.name in stages and isinstance(model, ast.Name) and model.id == "model"
                    where = f"{path.name}:{node.lineno} {ast.unparse(node)}"
                    assert passes_on or owned(model, assigned, node.lineno), where
    assert calls >= 5


class Gated(torch.nn.Module):
    """A learned gate opens a block; the test on its value fails on meta tensors and is caught there, so a
    meta forward skips the block whatever the gate says (the outside review's model)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(channels, 16, 3, padding=1)
        self.conv2 = torch.nn.Conv2d(16, 16, 3, padding=1)
        self.extra = torch.nn.Conv2d(16, 16, 3, padding=1)
        self.gate = torch.nn.Parameter(torch.zeros(()))
        self.fc = torch.nn.Linear(16, 10)

    def forward(self, x):
        x = self.conv2(torch.relu(self.conv1(x)))
        try:
            if self.gate > 0:
                x = x + self.extra(x)
        except (RuntimeError, NotImplementedError):
            pass
        return self.fc(x.mean((2, 3)))


def test_after_sparse_training_the_stage_counts_the_model_again(tiny_track):
    """The run's dense count stands for the prune stage's model only where no sparsify stage trained it since:
    a gate that training opened changes the real count but not the meta one, and the stage, seeing a
    regularizer, counts again (for real here), so the MACs it reports are Torch-Pruning's."""
    task = task_for(tiny_track)
    example = task.example_inputs()
    torch.manual_seed(0)
    model = Gated(example.shape[1]).eval()
    dense = Dense.of(model, example)  # before sparse training
    with torch.no_grad():
        model.gate.fill_(1.0)  # what sparse training may do
    spec = RunSpec(track=tiny_track, method=find_method("magnitude_l2"), regularizer=find_method("group_lasso"),
                   speedup=2, seed=0, runner="inprocess")
    pruned = prune_stage(spec, task, model, example, dense, None)
    assert pruned.macs == tp_counts(pruned.model, example)[0]
