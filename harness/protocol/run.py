"""The standard protocol, identical for every method:

base checkpoint -> [sparse training with a regularizer method] -> dependency
groups -> observations -> method scores -> remove the lowest-scoring channels
until the measured MACs speedup reaches the target -> retrain with the track's
recipe -> evaluate -> one result record.

:func:`evaluate` trusts its :class:`RunSpec`: what a user may get wrong in it (speedup,
capabilities, hyperparameters, sparse-training budget, docker caps) is checked by the plan
(:mod:`harness.plan`) that built it. What only the run can see (unknown data root, wrong checkpoint
hash, an architecture the harness cannot prune) raises HarnessError before anything is written. Once
the method has been started, every failure (the method's, or an unreachable target) becomes a
``failed`` record with a one-line error, and no partial artifacts are left behind
(:func:`_settle`: the run's one cleanup).
"""

from __future__ import annotations

import copy
import dataclasses
import datetime as dt
import os
import shutil
import tempfile
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Literal, Optional

import torch
import torch.nn as nn

from harness import stopping
from harness.errors import HarnessError, MethodFailure
from harness.methods import MethodSource
from harness.protocol import distributed
from harness.protocol.batchnorm import recalibrate
from harness.protocol.checkpoints import BaseCheckpoint, BaseMismatch, known_base_sha256
from harness.protocol.grouping import (build_graph, check_applicable, check_groups, count_layer_macs,
                                       describe_groups, layer_channels, meta_count_exact)
from harness.protocol.latency import measure as measure_latency
from harness.protocol.observations import collect
from harness.protocol.pruning import Ties, Unreachable, make_planner, max_speedup, prune_round
from harness.protocol.sparsify import sparsify
from harness.protocol.train import Progress
from harness.provenance import provenance
from harness.runners import client_class, spares
from harness.runners.sandbox import limits_for
from harness.store import image_digest_of, new_staging, publish, recorded, resolved_hyperparameters, run_dir
from harness.store import run_key_of as resolved_run_key
from harness.tasks import Task, base_sha256, task_for
from specs.result import (BeforeAfter, Diagnostics, JobInfo, MethodInfo, MetricInfo, ResultRecord, Speedup, Timing,
                          TrackInfo)
from specs.base import one_line
from specs.manifest import SandboxLimits
from specs.tensors import seed_everything
from specs.track import TrackConfig

if TYPE_CHECKING:
    from harness.runners.base import MethodClient


@dataclass
class RunSpec:
    track: TrackConfig
    method: MethodSource
    speedup: float
    seed: int
    runner: str = "subprocess"
    out: Path = Path("results")
    data_root: Optional[Path] = None
    cache_dir: Optional[Path] = None
    device: str = "cpu"
    hyperparameters: dict = field(default_factory=dict)
    call_timeout: Optional[float] = None
    save_models: bool = True
    #: a method providing "regularizer": sparse training (the track's ``sparsify`` recipe) comes first
    regularizer: Optional[MethodSource] = None
    reg_hyperparameters: dict = field(default_factory=dict)
    #: extra arguments for the importance method's runner, e.g. {"image": digest} for docker
    runner_options: dict = field(default_factory=dict)
    #: wall-clock budget for each method's whole conversation (start to close)
    run_timeout: Optional[float] = None
    measure_latency: bool = True
    #: recipe-swap mode: retrain with the track's alternative recipe of this name (None = ``track.retrain``)
    recipe: Optional[str] = None
    #: the organizers' caps on method containers; unset fields: the track's ``sandbox``, then the defaults
    sandbox: Optional[SandboxLimits] = None

    def limits(self):
        """The caps this run's runner enforces (:func:`harness.runners.sandbox.limits_for`)."""
        return limits_for(self.runner, self.sandbox, self.track.sandbox)
    #: sha256 of the base checkpoint (part of the run key), resolved before the run by :func:`with_base`;
    #: None = the run's base stage resolves it (and :func:`run_key_of` before a key is computed). A base that
    #: differs at run time is a recorded failure
    base_sha256: Optional[str] = None

    def retrain_recipe(self):
        try:
            return self.track.retrain_recipe(self.recipe)
        except ValueError as e:
            raise HarnessError(str(e)) from None


class BaseNotTrained(HarnessError):
    """The base checkpoint's sha256 cannot be known without training it (:func:`with_base`, ``train=False``)."""


def with_base(spec: RunSpec, train: bool = True, verify: bool = False) -> RunSpec:
    """``spec`` with ``base_sha256`` resolved (:func:`harness.tasks.base_sha256`: the published
    file's digest, the cached trained base's, the track's pin unless ``verify``, or - ``train`` - the base
    trained now).
    Raises :class:`BaseNotTrained` when it cannot be known without training and ``train`` is false, and
    :class:`BaseMismatch` when a file differs from the track's pin."""
    if spec.base_sha256 is not None:
        return spec
    digest = base_sha256(spec.track, spec.data_root, spec.cache_dir, spec.device, train=train, verify=verify)
    if digest is None:
        raise BaseNotTrained(f"the base checkpoint of track {spec.track.id} is not trained yet, and runs are keyed by "
                           f"its sha256: run `pbench-harness pretrain {spec.track.id}` first (with the same cache "
                           f"folder), or pin checkpoint.sha256 in the track")
    return dataclasses.replace(spec, base_sha256=digest)


def with_bases(specs: list[RunSpec], train: bool = True, verify: bool = False) -> list[RunSpec]:
    """:func:`with_base` for many runs, resolving each distinct base once. A base is trained only for
    runs that can use it: when no target of its runs is reachable, :class:`Unreachable` (one line) instead."""
    def ident(spec: RunSpec) -> tuple:
        return spec.track.hash(), str(spec.cache_dir), str(spec.data_root), spec.device

    keys = [ident(spec) for spec in specs]  # (a track's hash serializes it: once per run)
    resolved: dict[tuple, str] = {}
    out = []
    for spec, key in zip(specs, keys):
        if spec.base_sha256 is None and key in resolved:
            spec = dataclasses.replace(spec, base_sha256=resolved[key])
        try:
            spec = with_base(spec, False, verify)
        except BaseNotTrained:
            if not train:
                raise
            check_reachable(spec, sorted({s.speedup for s, k in zip(specs, keys) if k == key}))
            spec = with_base(spec, True, verify)
        resolved.setdefault(key, spec.base_sha256)
        out.append(spec)
    return out


def check_reachable(spec: RunSpec, targets: list[float]) -> None:
    """:class:`Unreachable` in one line when none of ``targets`` can be reached on ``spec``'s track (its
    model's architecture, strategy, floor and rounding: :func:`~harness.protocol.pruning.max_speedup`
    on a freshly built model), so that no base is trained for runs that would all fail. A model that
    cannot be built or counted here is left to its runs, which report it."""
    pruning = spec.track.pruning
    try:
        task = task_for(spec.track, data_root=spec.data_root, cache_dir=spec.cache_dir, device="cpu")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = task.architecture().eval()
        most = max_speedup(model, task.example_inputs().cpu(), task.prune_config, pruning.strategy,
                           pruning.min_channel_fraction, pruning.round_to)
    except Exception:  # (the run's own checks name what is wrong)
        return
    if min(targets) > most * (1 + 1e-9):
        listed = ", ".join(f"{t:g}x" for t in targets)
        which = f"speedup {listed} is" if len(targets) == 1 else f"speedups {listed} are"
        raise Unreachable(f"{which} unreachable on track {spec.track.id} with strategy {pruning.strategy}: at most "
                          f"{most:.2f}x (every group at its floor); its base was not trained")


def run_key_of(spec: RunSpec) -> str:
    """The run key of ``spec`` (:func:`harness.store.run_key_of`, which is pure) once its base digest is
    resolved (:func:`with_base`: the track's file, its cached trained base, its pin, or - only when none
    is known - the base trained now). ``spec`` itself is not changed."""
    return resolved_run_key(with_base(spec))


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def method_client(spec: RunSpec, source: MethodSource, hyperparameters: dict):
    """An unstarted client of ``source`` (the importance method or the regularizer) as run ``spec`` runs it:
    its runner, seed, device, deadlines and caps; the runner options (e.g. a docker image) are the
    importance method's only. Public for the estimator, which times the stages as a run does."""
    return spares.take(_new_client(spec, source, hyperparameters))


def _new_client(spec: RunSpec, source: MethodSource, hyperparameters: dict):
    options = spec.runner_options if source is spec.method else {}
    return client_class(spec.runner)(source, hyperparameters, spec.seed, spec.device, call_timeout=spec.call_timeout,
                                     run_timeout=spec.run_timeout, limits=spec.limits(), **options)


def next_method(spec: RunSpec) -> Callable[[], MethodClient]:
    """What makes run ``spec``'s (unstarted) method client, for a process launched ahead of it
    (:mod:`harness.runners.spares`): by ``evaluate`` as the run begins, or by the run before it in a sweep."""
    return lambda: _new_client(spec, spec.method, spec.hyperparameters)


def current_job() -> Optional[JobInfo]:
    """The Slurm job this process runs in, if any (array tasks as ``<array job>_<task>``)."""
    env = os.environ
    if env.get("SLURM_ARRAY_JOB_ID") and env.get("SLURM_ARRAY_TASK_ID"):
        job_id = f"{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}"
    elif env.get("SLURM_JOB_ID"):
        job_id = env["SLURM_JOB_ID"]
    else:
        return None
    return JobInfo(job_id=job_id, node=env.get("SLURMD_NODENAME"))


@dataclass
class Dense:
    """What the unpruned model measures (MACs and parameters on the example input, channels per layer,
    and Torch-Pruning's MACs per module, which the prune stage reuses: :meth:`of` counts them once)."""

    macs: float
    params: int
    layers: dict[str, int]
    layer_macs: Optional[dict[str, float]] = None

    @classmethod
    def of(cls, model: nn.Module, example) -> "Dense":
        macs, params, layer_macs = count_layer_macs(model, example)
        return cls(macs, params, layer_channels(model), layer_macs)


@dataclass
class Pruned:
    """What the prune stage returns: the physically pruned model and its measurements."""

    model: nn.Module
    macs: float
    params: int
    base_channels: dict[str, int]  # root channels of every group of the unpruned model
    step_s: float                  # observations + scoring + pruning
    score_s: float                 # inside the method
    ties: list[Ties] = field(default_factory=list)  # per round: how much the method's scores tied
    start_s: float = 0.0           # the method's start (launch to handshake), on its own thread
    start_wait_s: float = 0.0      # the part of start_s the stage waited for (not in step_s)


def method_info(spec: RunSpec, source: MethodSource, hyperparameters: dict) -> MethodInfo:
    """What the record says of a method before it starts: identity, resolved hyperparameters and,
    under docker, the image digest (also part of the run key)."""
    return MethodInfo(id=source.id, version=source.manifest.version, runner=spec.runner,
                      hyperparameters=resolved_hyperparameters(source, hyperparameters),
                      image_digest=image_digest_of(spec, source))


def evaluate(spec: RunSpec, progress: Optional[Progress] = None) -> tuple[ResultRecord, Path]:
    """Run the protocol once; returns the record and the run directory it was written to. ``spec`` is
    trusted: its checks are the plan's (:mod:`harness.plan`). The stages, in order: the world
    (:func:`_join_world`), the recipes and the base (:func:`_base_stage`), the model checks, the run's
    opening (:func:`_open_run`), then :func:`_run_stages` under :func:`_settle`, the one place where the
    run ends: its record, its staging directory, and what each process rank does. A method process
    launched ahead for it that it did not use is killed as it ends, unless a sweep expects another run."""
    try:
        return _evaluate(spec, progress)
    finally:
        spares.settle()


def _evaluate(spec: RunSpec, progress: Optional[Progress]) -> tuple[ResultRecord, Path]:
    spec, progress, w = _join_world(spec, progress)
    t_start, started = time.perf_counter(), _now()
    if w.main:  # the method starts while the base is loaded and checked (unless a spare of it already waits)
        with spares.expecting(next_method(spec)):
            spares.stock()
    seed_everything(spec.seed)
    task = task_for(spec.track, data_root=spec.data_root, cache_dir=spec.cache_dir, device=spec.device)
    _check_recipes(spec, task)
    try:
        spec, base = _base_stage(spec, task, progress)
    except BaseMismatch as e:  # not the base the run is keyed by (or the track pins): recorded under that key
        spec = dataclasses.replace(spec, base_sha256=spec.base_sha256 or spec.track.checkpoint.sha256)
        return _record_failure(spec, run_key_of(spec), str(e))
    _check_groups(spec, task, base)  # an architecture the harness cannot prune: bad input, before any method call
    _check_applicable(spec, task, base)
    run = _open_run(spec, task, base, w, t_start, started)
    if progress:
        progress("evaluate", 0, 2, metric=spec.track.metric, base=base.metric)
    return _settle(run, lambda: _run_stages(run, progress))


@dataclass
class _Run:
    """One run between its opening and its record: what the stages share, and what its record says
    whatever the outcome (``fields``, ``timing`` and ``metric`` grow as the stages pass)."""

    spec: RunSpec
    task: Task
    base: BaseCheckpoint
    world: distributed.World
    key: str
    target_dir: Path
    staging: Path           # the run's files until it is published (a private temporary folder off rank 0)
    example: torch.Tensor
    dense: Dense
    info: MethodInfo
    fields: dict
    metric: MetricInfo
    t_start: float
    timing: dict[str, float] = field(default_factory=dict)

    def save(self, model: nn.Module, name: str) -> None:
        if self.spec.save_models:
            self.task.save(model, self.staging / name)


def _check_applicable(spec: RunSpec, task: Task, base) -> None:
    """A model a method cannot score (its manifest's ``requires``): bad input, refused before anything is
    written; the check leaves the run's random stream alone."""
    needy = [s.manifest for s in (spec.method, spec.regularizer) if s is not None and s.manifest.requires]
    if not needy:
        return
    with torch.random.fork_rng(devices=[]):
        probe, probe_input = copy.deepcopy(base.model).to(spec.device), task.example_inputs()
        probe_groups = describe_groups(probe, probe_input, task.prune_config(probe))
        for manifest in needy:
            check_applicable(manifest, probe, probe_input, probe_groups)


def _open_run(spec: RunSpec, task: Task, base, w: "distributed.World", t_start: float, started: str) -> _Run:
    """The run's key (also checks the hyperparameters and, under docker, finds the image), what the dense
    model measures, the record's fields, and last the staging directory (rank 0's beside the run
    directory, the others' private)."""
    key = run_key_of(spec)
    target_dir = run_dir(spec, key)
    example = task.example_inputs()
    probe = copy.deepcopy(base.model).to(spec.device)  # counting leaves it as it is: the stages prune their own
    dense = Dense.of(probe, example)
    del probe
    fields = _record_fields(spec, key, base.sha256, started, current_job())
    fields["provenance"] = _with_training(fields["provenance"], spec, task, w)
    info = method_info(spec, spec.method, spec.hyperparameters)
    if spec.regularizer is not None:
        fields["regularizer"] = method_info(spec, spec.regularizer, spec.reg_hyperparameters)
    staging = new_staging(target_dir) if w.main else Path(tempfile.mkdtemp(prefix="pbench-rank-"))
    return _Run(spec, task, base, w, key, target_dir, staging, example, dense, info, fields,
                MetricInfo(name=spec.track.metric, base=base.metric), t_start)


def _run_stages(run: _Run, progress: Optional[Progress]) -> ResultRecord:
    """[sparse training] -> prune -> evaluate (and with BatchNorm re-estimated) -> retrain -> evaluate ->
    latency: the ``ok`` record. A failure raises; :func:`_settle` records it."""
    spec, task = run.spec, run.task
    model = copy.deepcopy(run.base.model).to(spec.device)
    if spec.regularizer is not None:
        run.timing["reg_s"] = _sparsify_stage(spec, task, model, run.example, progress)
        run.save(model, "sparse.pt")
    pruned = _prune_everywhere(spec, task, model, run.example, run.dense, progress)
    run.timing.update(step_s=pruned.step_s, score_s=pruned.score_s, method_start_s=pruned.start_s,
                      method_start_wait_s=pruned.start_wait_s)
    model = pruned.model
    run.metric = run.metric.model_copy(update={"pruned": task.evaluate(model),
                                               "pruned_recal": _recalibrate_stage(spec, task, model)})
    run.fields["diagnostics"] = _diagnostics(pruned.ties)
    if progress:
        progress("evaluate", 1, 2, metric=spec.track.metric, pruned=run.metric.pruned,
                 pruned_recal=run.metric.pruned_recal)
    run.save(model, "pruned.pt")
    _retrain_stage(run, model, progress)
    if spec.measure_latency:
        run.fields["latency"] = measure_latency(copy.deepcopy(run.base.model).to(spec.device), model, run.example,
                                                device=spec.device,
                                                calibration=_calibration_inputs(task, spec.seed))
    return _ok_record(run, pruned, layer_channels(model))


def _retrain_stage(run: _Run, model: nn.Module, progress: Optional[Progress]) -> None:
    """Step 4: retrain the pruned ``model`` in place with the run's recipe, then evaluate it."""
    spec, task = run.spec, run.task
    t0 = time.perf_counter()
    task.train(model, spec.retrain_recipe(), seed=spec.seed, progress=progress, stage="retrain")
    run.timing["retrain_s"] = time.perf_counter() - t0
    final = task.evaluate(model)
    run.metric = run.metric.model_copy(update={"final": final, "delta": final - run.base.metric})
    if progress:
        progress("evaluate", 2, 2, metric=spec.track.metric, final=final)
    run.save(model, "final.pt")


def _ok_record(run: _Run, pruned: Pruned, after: dict[str, int]) -> ResultRecord:
    """The record of a run whose stages all passed (``after``: the final model's channels per layer)."""
    dense = run.dense
    roots = [g for g in pruned.base_channels if g in after]
    return ResultRecord(
        status="ok", method=run.info, speedup=Speedup(target=run.spec.speedup, achieved=dense.macs / pruned.macs),
        macs=BeforeAfter(base=dense.macs, pruned=pruned.macs),
        params=BeforeAfter(base=dense.params, pruned=pruned.params), metric=run.metric,
        min_channel_fraction=min((after[g] / dense.layers[g] for g in roots), default=None),
        layer_channels={n: (dense.layers[n], after[n]) for n in dense.layers if n in after},
        timing=Timing(**run.timing, total_s=time.perf_counter() - run.t_start),
        files={n: n for n in ("sparse.pt", "pruned.pt", "final.pt") if (run.staging / n).exists()},
        finished_at=_now(), **run.fields)


def _failed(run: _Run, error: str) -> ResultRecord:
    """The record of a run that failed in its stages: what it measured before it failed."""
    dense = run.dense
    return ResultRecord(
        status="failed", error=_error_line(error), method=run.info,
        speedup=Speedup(target=run.spec.speedup), macs=BeforeAfter(base=dense.macs),
        params=BeforeAfter(base=dense.params), metric=MetricInfo(name=run.metric.name, base=run.metric.base),
        timing=Timing(**run.timing, total_s=time.perf_counter() - run.t_start), finished_at=_now(), **run.fields)


def _settle(run: _Run, stages) -> tuple[ResultRecord, Path]:
    """The whole run's cleanup, in one place. ``stages()`` gives the ``ok`` record; the method's failure
    or an unreachable target, and a crash inside the harness, become a ``failed`` record (its files
    removed); bad input (:class:`HarnessError`) removes the staging directory and propagates, and so does
    a stop (SIGTERM, Ctrl-C, a cancel: no record, the run runs again next time). Rank 0
    publishes the record; the other ranks only clean up (see :func:`_leave`)."""
    try:
        record, failure = stages(), None
    except (MethodFailure, Unreachable) as e:
        record, failure = _failed(run, str(e)), e
    except HarnessError as e:
        shutil.rmtree(run.staging, ignore_errors=True)
        if not run.world.main and not distributed.everywhere(e):  # rank 0 is elsewhere: it records why
            distributed.note_failure(_rank_notes(run.target_dir), one_line(e))  # (and torchrun stops it)
        raise
    except Exception as e:  # a crash inside the harness must not lose the sweep: record it
        error = _distributed_error(e, run.target_dir) if run.world.distributed else f"internal error: {one_line(e)}"
        record, failure = _failed(run, error), e
    except BaseException:  # stopped (SIGTERM, Ctrl-C, a cancel): no record, and none of its files left behind
        shutil.rmtree(run.staging, ignore_errors=True)
        raise
    if record.status == "failed":
        for f in run.staging.iterdir():
            f.unlink()
    return _leave(run, record, failure)


def _leave(run: _Run, record: ResultRecord, failure: Optional[BaseException]) -> tuple[ResultRecord, Path]:
    """Rank 0 publishes the record; another rank removes its private staging, and, when it failed alone
    (out of step with rank 0), notes why for rank 0 and leaves at once (torchrun stops the others). A
    run every rank ended alike waits at a barrier: rank 0 has published before any rank exits."""
    if not run.world.main:
        shutil.rmtree(run.staging, ignore_errors=True)
        if failure is not None and not distributed.everywhere(failure):
            if not isinstance(failure, distributed.WorkerStopped):  # (stopped because another rank failed)
                distributed.note_failure(_rank_notes(run.target_dir), one_line(failure))
            return record, run.target_dir
    else:
        publish(record, run.staging, run.target_dir)
    if failure is None or distributed.everywhere(failure):
        distributed.barrier()
    return record, run.target_dir


def _base_stage(spec: RunSpec, task: Task, progress: Optional[Progress]):
    """``(spec, base)``: the base checkpoint (loaded, or trained and cached: data and file problems are bad
    input, as ever), and ``spec`` keyed by it. A base other than the one ``spec`` was keyed by, or than the
    track pins, raises :class:`BaseMismatch`; a base that would be trained for a target no plan reaches
    raises :class:`Unreachable` first (:func:`check_reachable`)."""
    if spec.base_sha256 is None and spec.track.checkpoint.path is None \
            and known_base_sha256(spec.track, spec.cache_dir) is None:  # (a published base is never trained)
        check_reachable(spec, [spec.speedup])
    base = task.base_model(progress)
    if spec.base_sha256 is None:
        return dataclasses.replace(spec, base_sha256=base.sha256), base
    if base.sha256 != spec.base_sha256:
        raise BaseMismatch(f"base checkpoint {base.path} has sha256 {base.sha256}, but the run was keyed by "
                           f"{spec.base_sha256} (the file changed since: re-run to key it by the new base)")
    return spec, base


_GROUPS_CHECKED: set[tuple[str, str]] = set()  # (track hash, base sha256): checked once per process


def _check_groups(spec: RunSpec, task: Task, base) -> None:
    """:func:`~harness.protocol.grouping.check_groups` on a copy of the base model: every member's indices
    fit its tensor and a dry prune to the floor runs forward, or :class:`Unprunable` in one line."""
    key = (spec.track.hash(), base.sha256)
    if key in _GROUPS_CHECKED:
        return
    with torch.random.fork_rng(devices=[]):
        probe, example = copy.deepcopy(base.model).to(spec.device), task.example_inputs()
        config = task.prune_config(probe)
        check_groups(probe, example, config, describe_groups(probe, example, config),
                     spec.track.pruning.min_channel_fraction)
    _GROUPS_CHECKED.add(key)


def _recalibrate_stage(spec: RunSpec, task: Task, model: nn.Module) -> Optional[float]:
    """The metric of a copy of the pruned ``model`` whose BatchNorm statistics are re-estimated on the
    track's calibration images (:mod:`harness.protocol.batchnorm`); ``None`` without BatchNorm. ``model``
    itself is not changed: retraining starts from the pruned model as it is."""
    recal = copy.deepcopy(model)
    if not recalibrate(recal, task.calibration_batches(spec.seed), task.loss):
        return None
    return task.evaluate(recal)


def _calibration_inputs(task: Task, seed: int, n: int = 16) -> torch.Tensor:
    """Up to ``n`` images of the first calibration batch: where deployment runtimes are compared with PyTorch."""
    batch = task.calibration_batches(seed)[0]
    return (batch[0] if isinstance(batch, (tuple, list)) else batch)[:n]


def _diagnostics(ties: list[Ties]) -> Diagnostics:
    """The record's tie diagnostics, summed over pruning rounds."""
    units = sum(t.units for t in ties)
    constant = sorted({g for t in ties for g in t.constant_groups})
    return Diagnostics(tied_fraction=sum(t.tied for t in ties) / units if units else 0.0,
                       constant_groups=constant, groups=max((t.groups for t in ties), default=0))


# --------------------------------------------------------------------------- one run over N processes


def _join_world(spec: RunSpec, progress: Optional[Progress]) -> tuple[RunSpec, Optional[Progress], "distributed.World"]:
    """Under torchrun: join the process group, take this rank's GPU, and leave files, latency and
    progress to rank 0 (which alone talks to the methods and writes the record)."""
    w = distributed.init(spec.device)
    if not w.distributed:
        return spec, progress, w
    spec = dataclasses.replace(spec, device=distributed.local_device(spec.device, w),
                               save_models=spec.save_models and w.main, measure_latency=spec.measure_latency and w.main)
    return spec, progress if w.main else None, w


def _check_recipes(spec: RunSpec, task: Task) -> None:
    """Bad input, before anything runs: every recipe this run trains with must suit the task here."""
    if spec.track.checkpoint.pretrain is not None:
        task.check_recipe(spec.track.checkpoint.pretrain, "checkpoint.pretrain")
    if spec.regularizer is not None:
        task.check_recipe(spec.track.sparsify, "sparsify")
    task.check_recipe(spec.retrain_recipe(), "retrain")


def _with_training(prov, spec: RunSpec, task: Task, w: "distributed.World"):
    """The provenance with the process count, the backend and what each training stage applies."""
    stages = {"retrain": spec.retrain_recipe()}
    if spec.regularizer is not None:
        stages["sparsify"] = spec.track.sparsify
    training = {name: s for name, r in stages.items() if (s := task.training_settings(r)) is not None}
    return prov.model_copy(update={"world_size": w.size, "backend": w.backend, "training": training})


def _prune_everywhere(spec: RunSpec, task: Task, model: nn.Module, example, dense: Dense,
                      progress: Optional[Progress]) -> Pruned:
    """The prune stage on rank 0 (the only rank that talks to the method); every rank gets its result,
    the pruned model included (sent from the CPU, placed on each rank's device). Rank 0's ``model`` is
    pruned in place (see :func:`prune_stage`): pass a copy you own."""
    return distributed.on_main(
        lambda: prune_stage(spec, task, model, example, dense, progress),
        to_others=lambda p: dataclasses.replace(p, model=copy.deepcopy(p.model).cpu()),
        from_main=lambda p: dataclasses.replace(p, model=p.model.to(spec.device)))


def evaluate_distributed(spec: RunSpec, processes: int) -> ResultRecord:
    """``evaluate(spec)`` over ``processes`` local processes, launched with torchrun's machinery
    (:func:`harness.protocol.distributed.launch`; NCCL on GPUs, gloo on CPU), supervised: when a process
    dies before rank 0 has recorded the run (rank 0 itself killed, out of memory...), this records it
    as failed. Returns rank 0's record."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    key = run_key_of(spec)
    before = recorded(spec, key)
    threads = max(1, torch.get_num_threads() // processes)
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))  # as torchrun does: CPUs shared by the processes
    try:
        return distributed.launch(_evaluate_rank, (spec, threads), processes, run_id=key[:16])[0]
    except ChildFailedError as e:
        mine = recorded(spec, key)
        if mine is not None and (before is None or mine.started_at != before.started_at):
            return mine  # rank 0 recorded the failure itself
        notes = distributed.noted_failures(_rank_notes(run_dir(spec, key)), wait_s=0)  # (and removes them)
        rank, failure = e.get_first_failure()
        why = f"exit code {failure.exitcode}" if failure.exitcode >= 0 else f"signal {-failure.exitcode}"
        message = failure.message.get("message", "") if isinstance(failure.message, dict) else failure.message
        last = [line for line in str(message).splitlines() if line.strip()][-1:]
        detail = notes[0] if notes else last[0].strip() if last else ""
        return record_unrun(spec, f"distributed run failed: rank {rank} ended ({why}) before the run was "
                                  f"recorded" + (f": {detail}" if detail else ""), current_job())[0]


def _evaluate_rank(spec: RunSpec, threads: int) -> Optional[ResultRecord]:
    """One process of :func:`evaluate_distributed` (rank 0 returns the record; bad input is recorded)."""
    torch.set_num_threads(threads)
    try:
        return evaluate(spec)[0]
    except HarnessError as e:
        return record_unrun(spec, str(e), current_job())[0] if distributed.world().main else None


def _rank_notes(target_dir: Path) -> Path:
    return target_dir.with_name(f".{target_dir.name}.ranks")


def _distributed_error(e: Exception, target_dir: Path) -> str:
    """The failure of a distributed run as one line: what another rank said about its own failure,
    else what this rank saw (a peer's closed connection, or torchrun stopping it)."""
    distributed.shield()
    notes = distributed.noted_failures(_rank_notes(target_dir)) if distributed.world().main else []
    seen = one_line(e) if isinstance(e, distributed.WorkerStopped) else f"internal error: {one_line(e)}"
    return f"distributed run failed: {notes[0]}" if notes else \
        f"distributed run failed on rank {distributed.world().rank}: {seen}"


def _sparsify_stage(spec: RunSpec, task: Task, model: nn.Module, example, progress: Optional[Progress]) -> float:
    """Step 1: start the regularizer (same runner as the importance method; under torchrun on rank 0
    only) and sparse-train ``model`` in place with the track's ``sparsify`` recipe; returns the wall time
    (seconds)."""
    main = distributed.world().main
    with method_client(spec, spec.regularizer, spec.reg_hyperparameters) if main else nullcontext() as client:
        groups = describe_groups(model, example, task.prune_config(model))
        return sparsify(task, model, spec.track.sparsify, client, groups, spec.seed, progress)


def prune_stage(spec: RunSpec, task: Task, model: nn.Module, example, dense: Dense,
                 progress: Optional[Progress]) -> Pruned:
    """Steps 2-3, ``track.pruning.rounds`` times: groups -> observations -> scores -> the smallest
    plan whose measured speedup reaches this round's share of the target. The method starts on a thread
    while the graph is built and the first observations are collected; its start is timed apart
    (``Pruned.start_s``) and the time waited for it is not part of ``step_s``.

    ``model`` is consumed: it is pruned in place (through one dependency graph, built once), in one-shot
    runs too, and ``Pruned.model`` is that object; a stage that fails midway leaves it half-pruned. Pass
    a copy you own: :func:`evaluate` passes its run's deep copy of the base, the estimator and the
    benchmarks deep copies or models they built (``tests/test_prune_overhead.py`` checks the callers)."""
    with method_client(spec, spec.method, spec.hyperparameters).begin() as client:
        t0 = time.perf_counter()
        model, macs, params, base_channels, ties = _prune_rounds(spec, task, model, example, dense, client, progress)
        step_s = time.perf_counter() - t0 - client.start_wait_seconds
    spares.stock(like=client)  # a sweep's next run of this method: its process starts while this run retrains
    return Pruned(model, macs, params, base_channels, step_s, client.score_seconds, ties,
                  start_s=client.start_seconds, start_wait_s=client.start_wait_seconds)


def _prune_rounds(spec: RunSpec, task: Task, model: nn.Module, example, dense: Dense, client,
                  progress: Optional[Progress]):
    """The rounds of :func:`prune_stage`; returns ``(model, macs, params, base_channels, ties)``."""
    track = spec.track
    calib = task.calibration_batches(spec.seed)
    base_channels: dict[str, int] = {}
    macs, params = dense.macs, dense.params
    rounds = track.pruning.rounds
    graph = build_graph(model, example, task.prune_config(model))  # valid while the model is pruned through it
    ties, layers, meta = [], {}, False
    for r in range(rounds):
        stopping.check()
        groups = describe_groups(model, example, task.prune_config(model), graph)
        if r == 0:
            base_channels = {g.id: g.n_channels for g in groups}
            # rounds are guided by per-layer MACs; once per stage: whether the count on meta tensors is exact
            # (then counts and search probes run on weightless copies, see prune_round)
            # (the dense count is the stage's model's where no sparsify stage trained it since: the same
            # weights; after sparse training a forward that depends on the trained values is counted again)
            reuse = dense.layer_macs is not None and spec.regularizer is None
            known = (dense.macs, dense.params, dense.layer_macs) if reuse else None
            _, _, layers, meta = meta_count_exact(model, example, known)
        obs = collect(spec.method.manifest.observations, model, groups, calib, task.loss, seed=spec.seed,
                      calibration=track.calibration)
        scores = client.score(r, groups, obs)
        planner = make_planner(groups, scores, base_channels, track.pruning.strategy,
                               track.pruning.min_channel_fraction, seed=spec.seed, round_=r,
                               round_to=track.pruning.round_to)
        ties.append(planner.ties())
        found, layers = prune_round(model, example, task.prune_config, planner, dense.macs, macs,
                                    spec.speedup ** ((r + 1) / rounds), r == rounds - 1, layers, graph, meta)
        model, macs, params = found.model, found.macs, found.params
        task.after_prune(model)
        if progress:
            progress("prune", r + 1, rounds, macs=macs, speedup=dense.macs / macs)
    return model, macs, params, base_channels, ties


def _record_fields(spec: RunSpec, key: str, checkpoint_sha256: Optional[str], started: str,
                   job: Optional[JobInfo]) -> dict:
    """What every record of ``spec`` says about the run, whatever its outcome."""
    track = spec.track
    return dict(run_key=key, regularizer=None, track=TrackInfo(id=track.id, hash=track.hash()),
                model=track.model.name, dataset=track.dataset.name, seed=spec.seed,
                strategy=track.pruning.strategy, round_to=track.pruning.round_to, recipe=spec.recipe,
                started_at=started,
                provenance=provenance(checkpoint_sha256, spec.device), job=job)


def _error_line(error: str) -> str:
    return error.splitlines()[0][:1000] if error else "unknown error"


def record_unrun(spec: RunSpec, error: str, job: Optional[JobInfo] = None,
                 status: Literal["failed", "cancelled"] = "failed") -> tuple[ResultRecord, Path]:
    """Record a run that ended without producing a record of its own (its cluster job was cancelled,
    timed out, was preempted, or stopped on bad input; a user cancelled it) as ``status`` with ``error``,
    so that it is reported and re-run by ``--retry-failed``. An ``ok`` record the run did write is never
    replaced."""
    key = run_key_of(spec)
    existing = recorded(spec, key)
    if existing is not None and existing.status == "ok":  # the job finished its run before it was stopped
        return existing, run_dir(spec, key)
    return _record_failure(spec, key, error, job, status)


def _record_failure(spec: RunSpec, key: str, error: str, job: Optional[JobInfo] = None,
                    status: Literal["failed", "cancelled"] = "failed") -> tuple[ResultRecord, Path]:
    """Publish a ``status`` record for a run that never got to run (its section: the base it is keyed by)."""
    target_dir = run_dir(spec, key)
    now, reg = _now(), spec.regularizer
    fields = _record_fields(spec, key, spec.base_sha256, now, job)
    if reg is not None:
        fields["regularizer"] = MethodInfo(id=reg.id, version=reg.manifest.version, runner=spec.runner,
                                           hyperparameters=resolved_hyperparameters(reg, spec.reg_hyperparameters))
    record = ResultRecord(
        status=status, error=_error_line(error), speedup=Speedup(target=spec.speedup),
        method=MethodInfo(id=spec.method.id, version=spec.method.manifest.version, runner=spec.runner,
                          hyperparameters=resolved_hyperparameters(spec.method, spec.hyperparameters)),
        metric=MetricInfo(name=spec.track.metric), finished_at=now, **fields)
    publish(record, new_staging(target_dir), target_dir)
    return record, target_dir
