"""Sweeps on a Slurm cluster through submitit: one job per run (a Slurm job array).

The driver (``pbench-harness sweep --executor slurm``) submits every unfinished
run as one array task, waits for them, and reports each as it ends. Each job
runs the same protocol as a local run and writes its record into the shared
result store itself, so the driver may die at any time: jobs go on, and the
next ``sweep`` attaches to the jobs still queued or running (a journal beside
the store, ``.slurm/jobs.json``, maps run keys to job ids) and skips runs that
have a record. A job that ends without a record (cancelled, timed out,
preempted, node failure, out of memory) is recorded by the driver as a
``failed`` record carrying the job id and its Slurm state; ``--retry-failed``
submits it again.

The result store, the checkpoint cache and the data root must be on a file
system every node sees.

Runs are keyed by their base checkpoint's sha256, so the driver needs it before
it submits anything; a base that is neither cached, published nor pinned is
trained first by one Slurm job per track (:func:`with_bases_on_slurm`), never on
the login node.
"""

from __future__ import annotations

import dataclasses
import fcntl
import functools
import json
import os
import shutil
import signal
import time
from pathlib import Path
from typing import Callable, Optional

from pydantic import Field, ValidationError, field_validator

from harness.configs import read_mapping
from harness.errors import HarnessError
from harness.protocol.run import (RunSpec, current_job, evaluate, evaluate_distributed, record_unrun, run_key_of,
                                  with_bases)
from harness.files import atomic_write_text
from harness.store import clean_stale_staging, recorded, run_dir_name
from specs.base import Strict, explain
from specs.result import JobInfo, ResultRecord
from specs.base import one_line

#: sbatch options SlurmOptions sets itself; ``extra_sbatch`` may not repeat them
_MANAGED = {"partition", "gpus_per_node", "gres", "cpus_per_task", "mem", "time", "array", "job_name", "output",
            "error", "ntasks_per_node", "nodes", "account", "qos", "constraint"}
#: Slurm states of a job the scheduler stopped before it could finish
_STOPPED = {"CANCELLED", "TIMEOUT", "PREEMPTED", "NODE_FAIL", "OUT_OF_MEMORY", "DEADLINE", "BOOT_FAIL"}
#: Slurm states of a job that has not ended yet
_ACTIVE = {"PENDING", "RUNNING", "REQUEUED", "CONFIGURING", "COMPLETING", "RESIZING", "SUSPENDED", "REQUEUE_HOLD",
           "REQUEUE_FED", "SIGNALING", "STAGE_OUT", "STOPPED", "UNKNOWN"}


class SlurmOptions(Strict):
    """``--slurm-config FILE`` (YAML or JSON). Every field has a default; unknown keys are errors."""

    partition: Optional[str] = Field(None, description="partition (default: the cluster's default partition)")
    gpus_per_job: int = Field(0, ge=0, le=64, description="GPUs per run (with --device cuda)")
    processes_per_job: Optional[int] = Field(
        None, ge=1, le=64, description="processes per run, data parallel on one node (torchrun's machinery: "
                                       "NCCL on GPUs, gloo on CPUs); default: gpus_per_job, or 1")
    cpus_per_job: int = Field(2, ge=1, le=1024, description="CPUs per run; also the run's torch threads")
    mem_gb: float = Field(8, gt=0, description="memory per run, GB")
    time_min: int = Field(60, ge=1, description="time limit per run, minutes; a run that exceeds it is recorded "
                                                "as failed with Slurm state TIMEOUT")
    array_parallelism: int = Field(16, ge=1, description="at most this many runs at once")
    account: Optional[str] = None
    qos: Optional[str] = None
    constraint: Optional[str] = None
    extra_sbatch: dict[str, str | int | float | bool] = Field(
        default_factory=dict, description="further sbatch options, e.g. {exclusive: true, mail_type: END}")
    setup: list[str] = Field(default_factory=list,
                             description="shell lines run before each job, e.g. 'module load cuda'")
    folder: Optional[Path] = Field(None, description="job scripts and logs (default: <results>/.slurm/<sweep>)")
    poll_s: float = Field(5.0, gt=0, description="seconds between queue polls")

    @field_validator("extra_sbatch")
    @classmethod
    def _not_managed(cls, v: dict) -> dict:
        clash = sorted(k for k in v if k.replace("-", "_") in _MANAGED)
        if clash:
            raise ValueError(f"{', '.join(clash)} must be set through the named options, not extra_sbatch")
        return v

    @property
    def processes(self) -> int:
        return self.processes_per_job or max(1, self.gpus_per_job)

    @property
    def signal_delay_s(self) -> int:
        """Slurm warns a job (SIGUSR2) this long before its time limit, so that it can record its end:
        a tenth of the limit, between 10 s and 60 s."""
        return int(min(60, max(10, self.time_min * 6)))

    def executor_parameters(self) -> dict:
        params = dict(timeout_min=self.time_min, cpus_per_task=self.cpus_per_job, mem_gb=self.mem_gb,
                      nodes=1, tasks_per_node=1, slurm_array_parallelism=self.array_parallelism,
                      slurm_signal_delay_s=self.signal_delay_s,
                      slurm_job_name="pbench", slurm_setup=list(self.setup))
        if self.gpus_per_job:
            params["gpus_per_node"] = self.gpus_per_job
        for name in ("partition", "account", "qos", "constraint"):
            if getattr(self, name) is not None:
                params[f"slurm_{name}"] = getattr(self, name)
        if self.extra_sbatch:
            params["slurm_additional_parameters"] = {k.replace("-", "_"): v for k, v in self.extra_sbatch.items()}
        return params


def absolute(spec: RunSpec) -> RunSpec:
    """``spec`` with the paths a job on another node resolves the same way (its working directory may
    differ)."""
    return dataclasses.replace(spec, out=Path(spec.out).resolve(),
                               data_root=spec.data_root and Path(spec.data_root).resolve(),
                               cache_dir=spec.cache_dir and Path(spec.cache_dir).resolve())


def load_slurm_options(path: Optional[Path]) -> SlurmOptions:
    if path is None:
        return SlurmOptions()
    raw = read_mapping(path, "Slurm options file")
    try:
        return SlurmOptions.model_validate(raw)
    except ValidationError as e:
        raise HarnessError(f"{path}: invalid Slurm options: {explain(e)}") from None


def _threads_for_job() -> int:
    return max(1, int(os.environ.get("SLURM_CPUS_PER_TASK") or os.cpu_count() or 1))


class JobStopped(BaseException):
    """Slurm is stopping this job (a BaseException: the protocol must not record it as its own failure)."""

    def __init__(self, state: str):
        super().__init__(state)
        self.state = state


def _on_stop_signals(time_limit_s: float, delay_s: float) -> None:
    """SIGTERM (scancel, preemption, the time limit) and submitit's early SIGUSR2 warning (time limit
    or preemption, ``delay_s`` ahead) stop the run at once: the job then records how it
    ended instead of letting the protocol blame the method for a killed method process."""
    start = time.monotonic()

    def stop(signum, frame):
        # Slurm may signal up to 60 s early and checks limits every ~30 s; the job started before us
        late = time.monotonic() - start >= time_limit_s - delay_s - 120
        raise JobStopped("TIMEOUT" if late else "PREEMPTED" if signum == signal.SIGUSR2 else "CANCELLED")

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGUSR2, stop)


def run_job(spec: RunSpec, time_limit_s: float = float("inf"), signal_delay_s: float = 0,
            events=None, processes: int = 1) -> ResultRecord:
    """What one Slurm job runs. Idempotent: a run already recorded ``ok`` is not run again (a
    re-submitted or requeued job finds it). Every outcome leaves a record in the store. With
    ``processes > 1`` the run is data parallel over that many processes on the job's node."""
    import torch
    torch.set_num_threads(_threads_for_job())
    _on_stop_signals(time_limit_s, signal_delay_s)
    key = run_key_of(spec)
    existing = recorded(spec, key)
    if existing is not None and existing.status == "ok":
        return existing
    try:  # events: a harness.orchestration.events.EventLog (live events and cancelling, on the shared store)
        if processes > 1:
            return evaluate_distributed(spec, processes)
        return events.run(spec) if events is not None else evaluate(spec)[0]
    except HarnessError as e:  # bad input seen on the node (e.g. a data root it cannot read)
        return record_unrun(spec, str(e), current_job())[0]
    except JobStopped as stop:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # finish writing the record
        signal.signal(signal.SIGUSR2, signal.SIG_IGN)
        clean_stale_staging(Path(spec.out) / spec.track.id, run_dir_name(spec, key))
        job = current_job() or JobInfo(job_id="?")
        job = job.model_copy(update={"state": stop.state})
        return record_unrun(spec, f"Slurm job {job.job_id} ended {stop.state} (re-run with --retry-failed)",
                            job)[0]


def pretrain_job(spec: RunSpec) -> str:
    """What a base-training Slurm job runs: the sha256 of ``spec``'s base checkpoint, trained into the shared
    cache if it is not there yet."""
    import torch
    from harness.tasks import base_sha256
    torch.set_num_threads(_threads_for_job())
    return base_sha256(spec.track, spec.data_root, spec.cache_dir, spec.device, train=True)


def with_bases_on_slurm(specs: list[RunSpec], options: SlurmOptions, log: Callable[[str], None] = print
                        ) -> list[RunSpec]:
    """:func:`harness.protocol.run.with_bases` for a Slurm sweep: a base that must be trained first is
    trained by a Slurm job (one per track, with the sweep's resources), and the driver waits for it."""
    from harness.tasks import base_sha256
    missing: dict[tuple, RunSpec] = {}
    for spec in specs:
        ident = (spec.track.hash(), str(spec.cache_dir), str(spec.data_root), spec.device)
        if spec.base_sha256 is None and ident not in missing and \
                base_sha256(spec.track, spec.data_root, spec.cache_dir, spec.device, train=False, verify=True) is None:
            missing[ident] = spec
    if missing:
        submitit = _submitit()
        if shutil.which("sbatch") is None:
            raise HarnessError("--executor slurm: no `sbatch` on PATH (is this a Slurm login node? SLURM_CONF set?)")
        folder = Path(options.folder or Path(specs[0].out).resolve() / ".slurm" /
                      time.strftime(f"%Y%m%d-%H%M%S-{os.getpid()}-pretrain")).resolve()
        executor = submitit.AutoExecutor(folder=folder, cluster="slurm")
        executor.update_parameters(**{**options.executor_parameters(), "slurm_job_name": "pbench-pretrain"})
        try:
            jobs = [(spec, executor.submit(pretrain_job, absolute(spec))) for spec in missing.values()]
        except Exception as e:
            raise HarnessError(f"sbatch refused the pretraining job: {str(e).strip().splitlines()[-1]}") from None
        for spec, job in jobs:
            log(f"training the base checkpoint of {spec.track.id} in Slurm job {job.job_id} first (runs are keyed "
                f"by its sha256; logs in {folder})")
        for spec, job in jobs:
            try:
                job.result()
            except Exception as e:
                raise HarnessError(f"Slurm job {job.job_id} could not train the base of {spec.track.id}: "
                                   f"{one_line(e)[:300]}") from None
    return with_bases(specs, train=False)


def _slurm_state(job) -> str:
    try:
        return (job.state or "UNKNOWN").split()[0].upper()
    except Exception:  # sacct unreachable: treat as not finished yet
        return "UNKNOWN"


class Journal:
    """``<results>/.slurm/jobs.json``: run key -> (job id, submitit folder) of submitted runs."""

    def __init__(self, out: Path):
        self.path = Path(out) / ".slurm" / "jobs.json"
        self.entries = self._read()
        self._new: dict[str, dict] = {}

    def _read(self) -> dict[str, dict]:
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}

    def add(self, key: str, job_id: str, folder: Path) -> None:
        self._new[key] = self.entries[key] = {"job_id": job_id, "folder": str(folder)}

    def save(self) -> None:
        """Merge this driver's submissions into the file (another driver may have added its own)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_suffix(".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            self.entries = {**self._read(), **self._new}
            atomic_write_text(self.path, json.dumps(self.entries, indent=1, sort_keys=True) + "\n")


def _submitit():
    try:
        import submitit
    except ImportError:
        raise HarnessError("--executor slurm needs the submitit package (pip install submitit)") from None
    return submitit


def run_on_slurm(todo: list[RunSpec], out: Path, options: SlurmOptions,
                 done: Callable[[RunSpec, ResultRecord], None], log: Callable[[str], None] = print,
                 events=None) -> None:
    """Submit (or re-attach to) one Slurm job per run in ``todo``; call ``done`` as each ends."""
    submitit = _submitit()
    if shutil.which("sbatch") is None:
        raise HarnessError("--executor slurm: no `sbatch` on PATH (is this a Slurm login node? SLURM_CONF set?)")
    out = Path(out).resolve()
    journal = Journal(out)
    jobs: list[tuple[RunSpec, str, object]] = []  # (spec, run key, submitit job)
    fresh: list[tuple[RunSpec, str]] = []
    for spec in todo:
        key = run_key_of(spec)
        entry = journal.entries.get(key)
        if entry is not None:
            job = submitit.SlurmJob(folder=entry["folder"], job_id=entry["job_id"])
            state = _slurm_state(job)
            if state in _ACTIVE:
                log(f"attached to job {job.job_id} (still {state.lower()}): {run_dir_name(spec, key)}")
                jobs.append((spec, key, job))
                continue
        fresh.append((spec, key))
    if fresh:
        # one folder per submission: job ids restart at 1 on a fresh Slurm, and submitit finds results by id
        folder = Path(options.folder or out / ".slurm" / time.strftime(f"%Y%m%d-%H%M%S-{os.getpid()}")).resolve()
        executor = submitit.AutoExecutor(folder=folder, cluster="slurm")
        executor.update_parameters(**options.executor_parameters())
        try:
            job_fn = functools.partial(run_job, time_limit_s=options.time_min * 60,
                                       signal_delay_s=options.signal_delay_s, events=events,
                                       processes=options.processes)
            submitted = executor.map_array(job_fn, [spec for spec, _ in fresh])
        except Exception as e:
            raise HarnessError(f"sbatch refused the sweep: {str(e).strip().splitlines()[-1]}") from None
        for (spec, key), job in zip(fresh, submitted):
            journal.add(key, job.job_id, folder)
            jobs.append((spec, key, job))
        journal.save()
        log(f"submitted {len(fresh)} runs as Slurm job array {submitted[0].job_id.split('_')[0]} "
            f"(logs in {folder})")
    pending = dict(enumerate(jobs))
    while pending:
        for i in list(pending):
            spec, key, job = pending[i]
            if not job.done():
                continue
            del pending[i]
            done(spec, _outcome(spec, key, job))
        if pending:
            time.sleep(options.poll_s)


def _outcome(spec: RunSpec, key: str, job) -> ResultRecord:
    """The record of a finished job: its own, or one the driver writes for a job that left none."""
    state = _slurm_state(job)
    detail = ""
    if state not in _STOPPED:  # (submitit waits for the result file of a stopped job in vain)
        try:
            return job.result()
        except Exception as e:
            state = _slurm_state(job)
            detail = "" if state in _STOPPED else f": {one_line(e)[:300]}"
    clean_stale_staging(Path(spec.out) / spec.track.id, run_dir_name(spec, key))
    reason = f"Slurm job {job.job_id} ended {state}{detail} (re-run with --retry-failed)"
    return record_unrun(spec, reason, JobInfo(job_id=str(job.job_id), state=state))[0]
