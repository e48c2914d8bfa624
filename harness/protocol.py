"""The standard protocol, identical for every method:

base checkpoint -> [sparse training with a regularizer method] -> dependency
groups -> observations -> method scores -> remove the lowest-scoring channels
until the measured MACs speedup reaches the target -> retrain with the track's
recipe -> evaluate -> one result record.

Bad input (unknown data root, wrong checkpoint hash) raises HarnessError before
anything is written. Once the method has been started, every failure (the
method's, or an unreachable target) becomes a ``failed`` record with a one-line
error, and no partial artifacts are left behind.
"""

from __future__ import annotations

import copy
import datetime as dt
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from harness.errors import HarnessError, MethodFailure
from harness.grouping import count_macs_params, describe_groups, layer_channels
from harness.latency import measure as measure_latency
from harness.methods import MethodSource
from harness.observations import collect
from harness.provenance import provenance
from harness.pruning import Unreachable, make_planner, search_speedup
from harness.results import RESULT_FILE, read_record, run_key, write_record
from harness.runners import client_class
from harness.store import host_name, staging_prefix
from harness.sparsify import sparsify
from harness.tasks import task_for
from specs.result import BeforeAfter, JobInfo, MethodInfo, MetricInfo, ResultRecord, Speedup, Timing, TrackInfo
from specs.sdk import one_line, seed_everything
from specs.track import TrackConfig

#: progress(stage, done, total); stages: pretrain, prune, retrain
Progress = Callable[[str, int, int], None]


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

    def retrain_recipe(self):
        try:
            return self.track.retrain_recipe(self.recipe)
        except ValueError as e:
            raise HarnessError(str(e)) from None


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def _resolved(source: MethodSource, hp: dict) -> dict:
    try:
        return source.manifest.resolve_hyperparameters(hp)
    except ValueError as e:
        raise HarnessError(str(e)) from None


def run_key_of(spec: RunSpec) -> str:
    """The canonical identity of the run ``spec`` describes (:func:`harness.results.run_key`);
    a regularizer counts as ``id@version``; under docker the image digest is part of it."""
    reg = spec.regularizer
    digest = None
    recipe = None if spec.recipe is None else (spec.recipe, spec.retrain_recipe().hash())
    if spec.runner == "docker":
        from harness.runners.docker_runner import image_digest, image_tag
        digest = image_digest(spec.runner_options.get("image") or image_tag(spec.method.manifest))
    return run_key(spec.track.hash(), spec.method.id, spec.method.manifest.version, digest,
                   f"{reg.id}@{reg.manifest.version}" if reg else None, spec.speedup, spec.track.pruning.strategy,
                   spec.seed, _resolved(spec.method, spec.hyperparameters),
                   _resolved(reg, spec.reg_hyperparameters) if reg else None, recipe)


def _client(spec: RunSpec, source: MethodSource, hyperparameters: dict):
    options = spec.runner_options if source is spec.method else {}
    return client_class(spec.runner)(source, hyperparameters, spec.seed, spec.device, call_timeout=spec.call_timeout,
                                     run_timeout=spec.run_timeout, **options)


def run_dir_name(spec: RunSpec, key: str) -> str:
    name = spec.method.id + (f"+{spec.regularizer.id}" if spec.regularizer else "")
    recipe = f"-{spec.recipe}" if spec.recipe else ""
    return f"{name}-{spec.speedup:g}x-{spec.track.pruning.strategy}{recipe}-s{spec.seed}-{key[:8]}"


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


def _check_regularizer(spec: RunSpec) -> None:
    """Bad input, raised before anything runs or is written."""
    reg = spec.regularizer
    if reg is None:
        if spec.reg_hyperparameters:
            raise HarnessError("regularizer hyperparameters given without a regularizer")
        return
    if "regularizer" not in reg.manifest.provides:
        raise HarnessError(f"method {reg.id!r} provides no regularizer (it provides "
                           f"{'+'.join(reg.manifest.provides)}); e.g. group_norm, group_lasso, growing_reg, bn_scale_l1")
    if spec.track.sparsify.epochs == 0:
        raise HarnessError(f"track {spec.track.id} has no sparse-training budget (sparsify.epochs is 0)")
    try:
        reg.manifest.resolve_hyperparameters(spec.reg_hyperparameters)
    except ValueError as e:
        raise HarnessError(str(e)) from None


def evaluate(spec: RunSpec, progress: Optional[Progress] = None) -> tuple[ResultRecord, Path]:
    """Run the protocol once; returns the record and the run directory it was written to."""
    track, method = spec.track, spec.method
    if not 1.0 < spec.speedup <= 1000:
        raise HarnessError(f"speedup must be > 1 (e.g. 2, 4, 8), got {spec.speedup:g}")
    if "importance" not in method.manifest.provides:
        raise HarnessError(f"method {method.id!r} provides no importance scores (it is a regularizer)")
    _check_regularizer(spec)
    reg = spec.regularizer
    key = run_key_of(spec)  # also validates hyperparameters and (docker) finds the image
    t_start, started = time.perf_counter(), _now()
    seed_everything(spec.seed)
    task = task_for(track, data_root=spec.data_root, cache_dir=spec.cache_dir, device=spec.device)
    base = task.base_model(progress)
    strategy = track.pruning.strategy
    recipe = spec.retrain_recipe()
    run_dir = _run_dir(spec, key)
    staging = _new_staging(run_dir)

    model = copy.deepcopy(base.model).to(spec.device)
    example = task.example_inputs()
    base_macs, base_params = count_macs_params(model, example)
    base_layers = layer_channels(model)
    fields = _record_fields(spec, key, base.sha256, started, current_job())
    info = MethodInfo(id=method.id, version=method.manifest.version, runner=spec.runner)
    if reg is not None:
        fields["regularizer"] = MethodInfo(id=reg.id, version=reg.manifest.version, runner=spec.runner)
    timing: dict[str, float] = {}
    metric = MetricInfo(name=track.metric, base=base.metric)
    try:
        if reg is not None:
            _sparsify_stage(spec, task, model, example, fields, timing, staging, progress)
        client = _client(spec, method, spec.hyperparameters)
        info = MethodInfo(id=method.id, version=method.manifest.version, runner=spec.runner,
                          hyperparameters=client.hyperparameters)
        with client:
            info = info.model_copy(update={"image_digest": client.image_digest})
            t0 = time.perf_counter()
            calib = task.calibration_batches(spec.seed)
            base_channels: dict[str, int] = {}
            macs = base_macs
            rounds = track.pruning.rounds
            for r in range(rounds):
                groups = describe_groups(model, example, task.prune_config(model))
                if r == 0:
                    base_channels = {g.id: g.n_channels for g in groups}
                obs = collect(method.manifest.observations, model, groups, calib, task.loss, seed=spec.seed,
                              calibration=track.calibration)
                scores = client.score(r, groups, obs)
                planner = make_planner(groups, scores, base_channels, strategy, track.pruning.min_channel_fraction)
                found = search_speedup(model, example, task.prune_config, planner, base_macs, macs,
                                       spec.speedup ** ((r + 1) / rounds))
                model, macs, params = found.model, found.macs, found.params
                task.after_prune(model)
                if progress:
                    progress("prune", r + 1, rounds)
            timing["step_s"] = time.perf_counter() - t0
            timing["score_s"] = client.score_seconds
        metric = metric.model_copy(update={"pruned": task.evaluate(model)})
        if spec.save_models:
            task.save(model, staging / "pruned.pt")
        t0 = time.perf_counter()
        task.train(model, recipe, seed=spec.seed, progress=progress, stage="retrain")
        timing["retrain_s"] = time.perf_counter() - t0
        final = task.evaluate(model)
        metric = metric.model_copy(update={"final": final, "delta": final - base.metric})
        if spec.save_models:
            task.save(model, staging / "final.pt")
        if spec.measure_latency:
            fields["latency"] = measure_latency(copy.deepcopy(base.model).to(spec.device), model, example,
                                                device=spec.device)
        after = layer_channels(model)
        roots = [g for g in base_channels if g in after]
        record = ResultRecord(
            status="ok", method=info, speedup=Speedup(target=spec.speedup, achieved=base_macs / macs),
            macs=BeforeAfter(base=base_macs, pruned=macs), params=BeforeAfter(base=base_params, pruned=params),
            metric=metric,
            min_channel_fraction=min((after[g] / base_layers[g] for g in roots), default=None),
            layer_channels={n: (base_layers[n], after[n]) for n in base_layers if n in after},
            timing=Timing(**timing, total_s=time.perf_counter() - t_start),
            files={n: n for n in ("sparse.pt", "pruned.pt", "final.pt") if (staging / n).exists()},
            finished_at=_now(), **fields)
    except (MethodFailure, Unreachable) as e:
        record = _failed(str(e), info, spec, metric, base_macs, base_params, timing, t_start, fields)
    except HarnessError:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    except Exception as e:  # a crash inside the harness must not lose the sweep: record it
        record = _failed(f"internal error: {one_line(e)}", info, spec, metric, base_macs, base_params, timing,
                         t_start, fields)
    if record.status == "failed":
        for f in staging.iterdir():
            f.unlink()
    _publish(record, staging, run_dir)
    return record, run_dir


def _run_dir(spec: RunSpec, key: str) -> Path:
    return Path(spec.out) / spec.track.id / run_dir_name(spec, key)


def recorded(spec: RunSpec, key: str) -> Optional[ResultRecord]:
    """The record run ``spec`` (run key ``key``) already has in its store, if a valid one."""
    try:
        return read_record(_run_dir(spec, key) / RESULT_FILE)
    except HarnessError:  # none, or unreadable (a new one replaces it)
        return None


def _new_staging(run_dir: Path) -> Path:
    """A fresh private staging directory beside ``run_dir``."""
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=staging_prefix(run_dir.name), dir=run_dir.parent))
    os.chmod(staging, 0o755)
    return staging


def _publish(record: ResultRecord, staging: Path, run_dir: Path) -> None:
    write_record(staging / RESULT_FILE, record)
    _replace_dir(staging, run_dir)


def _record_fields(spec: RunSpec, key: str, checkpoint_sha256: Optional[str], started: str,
                   job: Optional[JobInfo]) -> dict:
    """What every record of ``spec`` says about the run, whatever its outcome."""
    track = spec.track
    return dict(run_key=key, regularizer=None, track=TrackInfo(id=track.id, hash=track.hash()),
                model=track.model.name, dataset=track.dataset.name, seed=spec.seed,
                strategy=track.pruning.strategy, recipe=spec.recipe, started_at=started,
                provenance=provenance(checkpoint_sha256, spec.device), job=job)


def _error_line(error: str) -> str:
    return error.splitlines()[0][:1000] if error else "unknown error"


def record_unrun(spec: RunSpec, error: str, job: Optional[JobInfo] = None) -> tuple[ResultRecord, Path]:
    """Record a run that ended without producing a record of its own (its cluster job was cancelled,
    timed out, was preempted, or stopped on bad input) as ``failed`` with ``error``, so that it is
    reported and re-run by ``--retry-failed``. An ``ok`` record the run did write is never replaced."""
    key = run_key_of(spec)
    run_dir = _run_dir(spec, key)
    existing = recorded(spec, key)
    if existing is not None and existing.status == "ok":  # the job finished its run before it was stopped
        return existing, run_dir
    now, reg = _now(), spec.regularizer
    fields = _record_fields(spec, key, None, now, job)
    if reg is not None:
        fields["regularizer"] = MethodInfo(id=reg.id, version=reg.manifest.version, runner=spec.runner,
                                           hyperparameters=_resolved(reg, spec.reg_hyperparameters))
    record = ResultRecord(
        status="failed", error=_error_line(error), speedup=Speedup(target=spec.speedup),
        method=MethodInfo(id=spec.method.id, version=spec.method.manifest.version, runner=spec.runner,
                          hyperparameters=_resolved(spec.method, spec.hyperparameters)),
        metric=MetricInfo(name=spec.track.metric), finished_at=now, **fields)
    _publish(record, _new_staging(run_dir), run_dir)
    return record, run_dir


def _sparsify_stage(spec: RunSpec, task, model, example, fields: dict, timing: dict, staging: Path,
                    progress: Optional[Progress]) -> None:
    """Step 1: start the regularizer (same runner as the importance method), sparse-train
    ``model`` in place with the track's ``sparsify`` recipe; ``timing["reg_s"]`` is its wall time."""
    reg = spec.regularizer
    client = _client(spec, reg, spec.reg_hyperparameters)
    fields["regularizer"] = fields["regularizer"].model_copy(update={"hyperparameters": client.hyperparameters})
    with client:
        fields["regularizer"] = fields["regularizer"].model_copy(update={"image_digest": client.image_digest})
        groups = describe_groups(model, example, task.prune_config(model))
        timing["reg_s"] = sparsify(task, model, spec.track.sparsify, client, groups, spec.seed, progress)
    if spec.save_models:
        task.save(model, staging / "sparse.pt")


def _failed(error: str, info: MethodInfo, spec: RunSpec, metric: MetricInfo, base_macs: float, base_params: int,
            timing: dict, t_start: float, fields: dict) -> ResultRecord:
    return ResultRecord(
        status="failed", error=_error_line(error), method=info,
        speedup=Speedup(target=spec.speedup), macs=BeforeAfter(base=base_macs),
        params=BeforeAfter(base=base_params), metric=MetricInfo(name=metric.name, base=metric.base),
        timing=Timing(**timing, total_s=time.perf_counter() - t_start), finished_at=_now(), **fields)


def _replace_dir(staging: Path, final: Path) -> None:
    """Move a finished staging directory into place, replacing an older run atomically enough:
    the old directory is renamed away first, so readers see the old or the new run, never a mix."""
    trash = None
    if final.exists():
        trash = final.with_name(f".old-{final.name}-{os.getpid()}@{host_name()}")
        os.replace(final, trash)
    os.replace(staging, final)
    if trash is not None:
        shutil.rmtree(trash, ignore_errors=True)
