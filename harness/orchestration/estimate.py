"""Projected device time of a plan's runs before they run (``pbench-harness sweep ... --dry-run``).

Users of a cluster budget with it. Every stage a run will execute is measured here, on this device,
with the harness's own code for a few steps, and scaled to the track's budget:

- pretrain (once per sweep, only when the base checkpoint is not cached): training steps of the base
  network, x the pretrain recipe's epochs x steps per epoch;
- sparsify (regularizer runs): training steps with the regularizer asked every step through its
  real runner, x the sparsify recipe's steps;
- prune: the prune stage itself (observations on the track's calibration data, the method through its
  real runner, the speedup search) with one round, or two of a progressive track's rounds, x rounds / 2;
  each method once, at the plan's first target;
- retrain: training steps of a network pruned to the run's target, x the retrain recipe's steps;
- evaluate: forward passes over a few test batches, x the test split, twice (pruned and final);
- latency: the latency measurement itself (when the runs measure it).

Training is timed at two lengths (after a warm-up; the faster of two timings each) and differenced: the
marginal cost per step, plus the fixed cost of one start (loader workers, compilation). Seeds cost the same. Weights are the base checkpoint's when it is
cached, else random (the costs do not depend on them). Nothing is written to the result store.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import time
from pathlib import Path
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
from torch.utils.data import Subset, TensorDataset

from harness.errors import HarnessError
from harness.labels import label_of

#: training steps timed beyond the first (the marginal cost per step)
MEASURE_STEPS = 4
#: timings of each length (their minimum counts)
REPEATS = 2
#: test images timed for the evaluation cost
MEASURE_TEST = 512


@dataclass
class StageCost:
    stage: str
    seconds: float
    basis: str  # how it was projected, e.g. "100 ep x 390 steps x 41.2 ms + 3.1 s"


@dataclass
class RunCost:
    """The projected cost of one run shape (method, regularizer, target, recipe); ``runs`` of them to run."""

    name: str
    speedup: float
    runs: int
    stages: list[StageCost] = field(default_factory=list)

    @property
    def seconds(self) -> float:
        return sum(s.seconds for s in self.stages)


@dataclass
class PlanCost:
    device: str
    processes: int
    shapes: list[RunCost]
    pretrain: Optional[StageCost]
    skipped: int

    @property
    def runs(self) -> int:
        return sum(s.runs for s in self.shapes)

    @property
    def seconds(self) -> float:
        return sum(s.seconds * s.runs for s in self.shapes) + (self.pretrain.seconds if self.pretrain else 0.0)

    @property
    def device_hours(self) -> float:
        """Device-hours on one device per run: N data-parallel processes divide the wall time, not these."""
        return self.seconds / 3600


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _first(ds, n: int):
    if isinstance(ds, TensorDataset):
        return TensorDataset(*(t[:n] for t in ds.tensors))
    return Subset(ds, range(min(n, len(ds))))


def _limited(task, train: Optional[int] = None, test: Optional[int] = None):
    """A shallow copy of ``task`` whose data holds only the first ``train`` / ``test`` images."""
    data = task.data
    changes = {}
    if train is not None:
        changes["train"] = _first(data.train, train)
    if test is not None:
        changes["test"] = _first(data.test, test)
    small = copy.copy(task)
    small.__dict__["data"] = dataclasses.replace(data, **changes)
    return small


def _steps_per_epoch(task, recipe) -> int:
    n = len(task.data.train)
    return max(1, n // recipe.batch_size if n >= recipe.batch_size else 1)


def _timed(fn: Callable[[], object], device: str) -> float:
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - t0


def training_cost(task, model, recipe, stage: str, steps: int = MEASURE_STEPS,
                  train: Optional[Callable] = None) -> StageCost:
    """``recipe``'s training of ``model`` on ``task``: timed for 1 and ``1 + steps`` steps.
    ``train(task, model, recipe)`` trains (default ``task.train``; sparse training passes its own)."""
    train = train or (lambda t, m, r: t.train(m, r, seed=0, stage=stage))
    one = recipe.model_copy(update={"epochs": 1})

    def run(k: int) -> float:
        return _timed(lambda: train(_limited(task, train=k * recipe.batch_size), copy.deepcopy(model), one),
                      task.device)

    run(1)  # warm-up: kernels for these shapes (oneDNN, cuDNN autotuning) are built once per process
    times = [min(run(k) for _ in range(REPEATS)) for k in (1, 1 + steps)]  # the fastest: the least disturbed
    # a step is the difference of the two timings; where noise makes it vanish, the longer run's mean step
    # bounds it (a step never costs nothing)
    per_step = (times[1] - times[0]) / steps if times[1] > times[0] else times[1] / (1 + steps)
    start = max(0.0, times[0] - per_step)
    total = recipe.epochs * _steps_per_epoch(task, recipe)
    return StageCost(stage, start + per_step * total,
                     f"{recipe.epochs} ep x {_steps_per_epoch(task, recipe)} steps x {per_step * 1e3:.2f} ms "
                     f"+ {start:.1f} s start")


def evaluation_cost(task, model, count: int = 2) -> StageCost:
    n = len(task.data.test)
    m = min(n, MEASURE_TEST)
    seconds = _timed(lambda: _limited(task, test=m).evaluate(model), task.device)
    return StageCost("evaluate", count * seconds * n / max(1, m), f"{count} x {n} images at {m / seconds:.0f}/s")


def _base(track, task):
    """(base network, its checkpoint is available): the cached or published checkpoint, else random weights."""
    from harness.protocol.checkpoints import load_state, build_model, cache_path
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(track.checkpoint.pretrain_seed)
        model = build_model(track, task.data)
    path = Path(os.path.expanduser(track.checkpoint.path)) if track.checkpoint.path else \
        cache_path(track, task.cache_dir)
    if path.is_file():
        load_state(model, path)
    return model.to(task.device).eval(), path.is_file() or track.checkpoint.path is not None


def _unrecorded(resolved) -> list:
    """The runs of ``resolved`` a sweep would run: those not recorded (``retry_failed``: not recorded ``ok``).
    Keys need the base digest; a base not trained yet is measured, never trained here, and no run of it
    can be recorded."""
    from harness.protocol.run import BaseNotTrained, with_bases
    from harness.store import Store, run_key_of
    plan = resolved.plan
    try:
        specs = with_bases(resolved.specs, train=False)
    except BaseNotTrained:
        return list(resolved.specs)
    recorded = Store.load(plan.out).records if plan.out.exists() else {}
    return [s for s in specs if not ((r := recorded.get(run_key_of(s))) is not None
                                     and (r.status == "ok" or not plan.retry_failed))]


def estimate(resolved, steps: int = MEASURE_STEPS, log: Callable[[str], None] = lambda line: None) -> PlanCost:
    """Projected cost of every run of ``resolved`` (a :class:`harness.plan.ResolvedPlan`) not yet recorded."""
    from harness.methods import find_method
    from harness.protocol.grouping import describe_groups
    from harness.protocol.latency import projected_seconds
    from harness.protocol.run import Dense, method_client, prune_stage
    from harness.protocol.sparsify import sparsify
    from harness.tasks import task_for
    from harness.tasks.classification import ClassificationTask

    plan, track = resolved.plan, resolved.track
    todo = _unrecorded(resolved)
    skipped = len(resolved.specs) - len(todo)
    processes = resolved.slurm.processes if resolved.slurm is not None else 1
    if not todo:
        return PlanCost(plan.device, processes, [], None, skipped)
    first = todo[0]
    task = task_for(track, data_root=first.data_root, cache_dir=first.cache_dir, device=first.device)
    if not isinstance(task, ClassificationTask):
        raise HarnessError(f"--dry-run estimates classification tracks; {track.id} trains with Ultralytics' trainer")
    base, available = _base(track, task)
    example = task.example_inputs()
    dense = Dense.of(base, example)

    pretrain = None
    if not available:
        log("measuring pretraining (no cached base checkpoint)")
        pretrain = training_cost(task, base, track.checkpoint.pretrain, "pretrain", steps)

    rounds = track.pruning.rounds
    measured_rounds = min(rounds, 2)
    timed_track = track.model_copy(update={"pruning": track.pruning.model_copy(update={"rounds": measured_rounds})})
    prune: dict[str, StageCost] = {}
    for spec in todo:
        if spec.method.id in prune:
            continue
        log(f"measuring the prune stage of {spec.method.id}")
        s = dataclasses.replace(spec, track=timed_track, speedup=todo[0].speedup)
        seconds = _timed(lambda: prune_stage(s, task, copy.deepcopy(base), example, dense, None), task.device)
        prune[spec.method.id] = StageCost("prune", seconds * rounds / measured_rounds,
                                          f"{rounds} rounds x {seconds / measured_rounds:.2f} s")

    pruned: dict[float, torch.nn.Module] = {}
    for target in sorted({s.speedup for s in todo}):
        log(f"pruning a network to {target:g}x for the retraining measurement")
        s = dataclasses.replace(todo[0], track=track.model_copy(update={"pruning": track.pruning.model_copy(
            update={"rounds": 1})}), method=find_method("magnitude_l2"), runner="inprocess", speedup=target,
            regularizer=None, hyperparameters={})
        pruned[target] = prune_stage(s, task, copy.deepcopy(base), example, dense, None).model

    sparse: dict[str, StageCost] = {}
    for spec in todo:
        reg = spec.regularizer
        if reg is None or reg.id in sparse:
            continue
        log(f"measuring sparse training with {reg.id}")
        with method_client(spec, reg, spec.reg_hyperparameters) as client:
            sparse[reg.id] = training_cost(
                task, base, track.sparsify, "sparsify", steps,
                train=lambda t, m, r: sparsify(t, m, r, client, describe_groups(m, example, t.prune_config(m)), 0))

    retrain: dict[tuple, StageCost] = {}
    evaluation: dict[float, StageCost] = {}
    latency: dict[float, StageCost] = {}
    shapes: dict[tuple, RunCost] = {}
    for spec in todo:
        recipe = spec.retrain_recipe()
        if (spec.speedup, recipe.hash()) not in retrain:
            log(f"measuring retraining at {spec.speedup:g}x")
            retrain[spec.speedup, recipe.hash()] = training_cost(task, pruned[spec.speedup], recipe, "retrain", steps)
            evaluation[spec.speedup] = evaluation_cost(task, pruned[spec.speedup])
            latency[spec.speedup] = StageCost("latency", projected_seconds(
                base, pruned[spec.speedup], example, device=task.device), "projected from one pass")
        key = (spec.method.id, spec.regularizer.id if spec.regularizer else None, spec.speedup, spec.recipe)
        if key not in shapes:
            name = label_of(spec) + (f" ({spec.recipe})" if spec.recipe else "")
            stages = ([sparse[spec.regularizer.id]] if spec.regularizer else []) + [
                prune[spec.method.id], retrain[spec.speedup, recipe.hash()], evaluation[spec.speedup]]
            if spec.measure_latency:
                stages.append(latency[spec.speedup])
            shapes[key] = RunCost(name, spec.speedup, 0, stages)
        shapes[key].runs += 1
    device = torch.cuda.get_device_name() if task.device.startswith("cuda") else task.device
    return PlanCost(device, processes, list(shapes.values()), pretrain, skipped)


def _h(seconds: float) -> str:
    return f"{seconds / 3600:.2f}" if seconds >= 36 else f"{seconds / 3600:.4f}"


def markdown(cost: PlanCost) -> str:
    """The estimate as a table (hours per stage, per run and for all runs of each shape) and a total."""
    stages = ["sparsify", "prune", "retrain", "evaluate", "latency"]
    lines = [f"| run | target | runs | {' | '.join(stages)} | per run (h) | all runs (h) |",
             "|" + "---|" * (len(stages) + 5)]
    for shape in cost.shapes:
        by = {s.stage: s for s in shape.stages}
        cells = [_h(by[s].seconds) if s in by else "-" for s in stages]
        lines.append(f"| {shape.name} | {shape.speedup:g}x | {shape.runs} | {' | '.join(cells)} | "
                     f"{_h(shape.seconds)} | {_h(shape.seconds * shape.runs)} |")
    notes = []
    if cost.pretrain is not None:
        notes.append(f"pretraining the base checkpoint (once): {_h(cost.pretrain.seconds)} h ({cost.pretrain.basis})")
    for shape in cost.shapes[:1]:
        notes += [f"{s.stage}: {s.basis}" for s in shape.stages]
    per = f"; wall time per run / {cost.processes} with {cost.processes} processes each" if cost.processes > 1 else ""
    notes.append(f"total: {cost.device_hours:.2f} device-hours on {cost.device} for {cost.runs} runs "
                 f"({cost.skipped} already recorded, not counted){per}")
    return "\n".join(lines + [""] + notes)
