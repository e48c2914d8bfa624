"""Sweeps: many runs into one result store, resumable.

A run whose key already has a record is skipped (``ok`` ones always; ``failed``
ones unless ``retry_failed``), so a sweep killed at any moment and restarted
finishes the missing runs only: no run is lost, none is duplicated, and no
half-written file is ever read (see :mod:`harness.store`). Runs go to a pool of
``jobs`` worker processes (``executor="local"``) or to Slurm, one job per run
(``executor="slurm"``, :mod:`harness.orchestration.cluster`); one failing run never stops the
others. No run starts while the disk is nearly full (:mod:`harness.orchestration.preflight`). A stop
(SIGTERM, Ctrl-C: :mod:`harness.stopping`) unwinds the runs in flight, which leave no record, and starts
no other. A pool worker killed outright (the system's out-of-memory killer, a crash in native code) costs
its own run only, recorded ``failed`` with the signal; the sweep goes on.

Every run is keyed by its base checkpoint's sha256 (:func:`harness.protocol.run.with_bases` resolves
it once per track before any run: the local executor trains a missing base here first, a Slurm sweep
in one Slurm job), so records of another base in the same store are neither skipped for nor mixed
with this sweep's: ``log`` gets one line naming them.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import sys
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Optional

from harness import stopping
from harness.errors import HarnessError
from harness.orchestration.preflight import check_free_space
from harness.labels import label_of
from harness.protocol.run import RunSpec, evaluate, next_method, record_unrun, with_bases
from harness.runners import client_class, spares
from harness.store import run_key_of
from harness.store import Store, clean_stale_staging
from specs.result import ResultRecord

if TYPE_CHECKING:
    from harness.orchestration.events import EventLog

OnResult = Callable[[RunSpec, ResultRecord, str], None]  # (spec, record, "ran" | "skipped")


@dataclass
class SweepSummary:
    records: list[ResultRecord] = field(default_factory=list)
    ran: int = 0
    skipped: int = 0

    @property
    def failed(self) -> int:
        return sum(r.status != "ok" for r in self.records)


def _run_one(spec: RunSpec, threads: int, events: Optional["EventLog"] = None, progress=None,
             next_spec: Optional[RunSpec] = None) -> ResultRecord:
    """One run; ``next_spec``: the run this process does next, whose method it launches (a spare, see
    :mod:`harness.runners.spares`) while this run retrains."""
    try:
        stopping.check()  # (a stop that library code swallowed starts no other run)
        if threads:
            import torch
            torch.set_num_threads(threads)
        with spares.expecting(next_method(next_spec) if next_spec is not None else None):
            return events.run(spec, progress) if events is not None else evaluate(spec, progress)[0]
    except BaseException:
        if _worker and stopping.requested():  # its run has unwound: the pool worker ends here (its pool would
            spares.discard()                  # wait for a next run forever when the sweep's process is gone)
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(128 + signal.SIGTERM)
        raise


def _run_in_order(specs: list[RunSpec], run: Callable[[int, RunSpec, Optional[RunSpec]], None]) -> None:
    """``run(i, spec, next spec)`` for every spec in turn; no spare outlives the last."""
    try:
        for i, spec in enumerate(specs):
            run(i, spec, specs[i + 1] if i + 1 < len(specs) else None)
    finally:
        spares.discard()


def other_bases(specs: list[RunSpec], records) -> list[str]:
    """One line per track of ``specs`` whose store also holds records made from another base checkpoint
    (or another version of the track): they stay out of this sweep's leaderboard."""
    from harness.labels import short
    mine = {(s.track.id, s.track.hash(), s.base_sha256) for s in specs}
    lines = []
    for track in sorted({t for t, _, _ in mine}):
        others = sorted({(r.track.hash, r.provenance.checkpoint_sha256) for r in records if r.track.id == track}
                        - {(h, b) for t, h, b in mine if t == track})
        if others:
            named = ", ".join(f"base {short(b)} (track {short(h)})" for h, b in others)
            lines.append(f"warning: the store also holds records of {track} from {named}; this sweep's runs "
                         f"(base {short(next(b for t, _, b in mine if t == track))}) are never pooled with them")
    return lines


def run_each(specs: list[RunSpec], on_result: Optional[OnResult] = None, progress=None,
             events: Optional["EventLog"] = None) -> SweepSummary:
    """Run every spec here, one after the other, recorded or not (``evaluate``): a run replaces an older
    record of its key. No base is resolved up front: each run's base stage resolves it (a base other than
    the track's pin is then that run's recorded failure, not a stop), and under torchrun every rank runs
    the same specs in step."""
    summary = SweepSummary()
    _remove_stale(specs)

    def run(i: int, spec: RunSpec, next_spec: Optional[RunSpec]) -> None:
        record = _run_one(spec, 0, events, progress, next_spec)
        summary.records.append(record)
        summary.ran += 1
        if on_result:
            on_result(spec, record, "ran")

    _run_in_order(specs, run)
    return summary


def run_sweep(specs: list[RunSpec], out: Path, jobs: int = 1, retry_failed: bool = False,
              on_result: Optional[OnResult] = None, progress=None, executor: str = "local",
              slurm=None, log=print, events: Optional["EventLog"] = None,
              min_free_mb: Optional[float] = None) -> SweepSummary:
    """Run every spec not yet recorded; ``executor="slurm"`` takes :class:`harness.orchestration.cluster.SlurmOptions`
    as ``slurm`` (``jobs`` is then Slurm's business: ``array_parallelism``). With ``events``
    (:class:`harness.orchestration.events.EventLog`) every run, wherever it runs, appends live events
    to the store and can be cancelled. Raises :class:`~harness.orchestration.preflight.LowDisk` instead
    of starting a run (or a batch of runs) while less than ``min_free_mb`` is free
    (:func:`~harness.orchestration.preflight.check_free_space`)."""
    if executor == "slurm":
        from harness.orchestration.cluster import SlurmOptions, with_bases_on_slurm
        specs = with_bases_on_slurm(specs, slurm or SlurmOptions(), log)
    else:  # a mismatching base stops the sweep here, in one line, before any run
        specs = with_bases(specs, verify=True)
    clean_stale_staging(out)
    _remove_stale(specs)
    store = Store.load(out)
    for line in other_bases(specs, store.records.values()):
        log(line)
    summary = SweepSummary()
    todo = []
    for spec in specs:
        existing = store.records.get(run_key_of(spec))
        if existing is not None and (existing.status == "ok" or not retry_failed):
            summary.records.append(existing)
            summary.skipped += 1
            if on_result:
                on_result(spec, existing, "skipped")
        else:
            todo.append(spec)

    def done(spec: RunSpec, record: ResultRecord) -> None:
        summary.records.append(record)
        summary.ran += 1
        if on_result:
            on_result(spec, record, "ran")

    def preflight(first: int) -> None:
        if todo:
            check_free_space(out, any(s.runner == "docker" for s in todo), min_free_mb,
                             before=f"starting run {first} of {len(todo)}" if first > 1 else "starting the sweep")

    if executor == "slurm":
        from harness.orchestration.cluster import SlurmOptions, absolute, run_on_slurm
        preflight(1)
        run_on_slurm([absolute(s) for s in todo], out, slurm or SlurmOptions(), done, log, events=events)
        return summary
    if jobs <= 1:
        def run(i: int, spec: RunSpec, next_spec: Optional[RunSpec]) -> None:
            preflight(i + 1)
            done(spec, _run_one(spec, 0, events, progress, next_spec))

        _run_in_order(todo, run)
        return summary
    preflight(1)
    _run_pool(todo, jobs, out, events, done, log)
    return summary


def _run_pool(todo: list[RunSpec], jobs: int, out: Path, events: Optional["EventLog"],
              done: Callable[[RunSpec, ResultRecord], None], log) -> None:
    """``todo`` on ``jobs`` worker processes. A worker killed outright (the out-of-memory killer, a crash in
    native code) breaks the pool, and the executor stops the other workers' runs (they unwind, unrecorded): its
    own run is recorded ``failed`` with the signal (``--retry-failed`` runs it again), and the rest of the sweep,
    the stopped runs included, goes on in a fresh pool. A worker that dies holding no run (killed while idle or
    starting) or is stopped by a SIGTERM of its own costs no record: the runs in flight run again, up to
    :data:`UNEXPLAINED_BREAKS` times in a row."""
    threads = max(1, (os.cpu_count() or 1) // jobs)
    remaining, unexplained = list(todo), 0
    while remaining:
        stopping.check()
        context = mp.get_context("spawn")
        claims = context.RawArray("q", len(remaining))  # run i's worker pid, set as it starts (no lock to die with)
        with ProcessPoolExecutor(max_workers=min(jobs, len(remaining)), mp_context=context,
                                 initializer=_worker_start, initargs=(os.getpid(), claims)) as pool:
            # a worker does not know which run it gets next; while runs remain, it bets on this run's method
            # (a plan's runs go method by method); a spare nobody takes dies with the worker
            futures = {pool.submit(_pool_run, i, spec, threads, events, spec if i + jobs < len(remaining) else None):
                       i for i, spec in enumerate(remaining)}
            workers = dict(pool._processes or {})  # (all started by now: one per submit, up to max_workers)
            finished: set[int] = set()
            try:
                for future in as_completed(futures):
                    done(remaining[futures[future]], future.result())
                    finished.add(futures[future])
                return
            except BrokenProcessPool:
                _stop(pool, stopped=True)
                for future, i in futures.items():  # (runs that ended before the pool broke, not yet counted)
                    if i not in finished and future.done() and not future.cancelled() and not future.exception():
                        done(remaining[i], future.result())
                        finished.add(i)
                killed = _killed_runs(workers, claims, finished)
                unexplained = 0 if killed else unexplained + 1
                stopping.check()  # (a stop that came meanwhile: the sweep stops as it would have)
                if unexplained > UNEXPLAINED_BREAKS:
                    raise HarnessError(f"worker processes of the sweep died {unexplained} times in a row outside any "
                                       "run (killed while idle or starting, or stopped with SIGTERM); the runs in "
                                       "flight have no record: the same command resumes the sweep") from None
            except BaseException as e:
                _stop(pool, stopped=isinstance(e, (SystemExit, KeyboardInterrupt)))
                raise
        clean_stale_staging(out)  # (the dead worker's staging folder, its exchange folders and container)
        _remove_stale(remaining)
        for i, code in killed.items():
            _record_killed(remaining[i], code, events, done, log)
        if not killed:
            log(f"a worker process of the sweep died outside any run ({_how_it_ended(workers)}); the runs in flight "
                f"run again")
        remaining = [spec for i, spec in enumerate(remaining) if i not in finished and i not in killed]


#: how many times in a row a sweep's pool may break with no run to blame before the sweep stops
UNEXPLAINED_BREAKS = 2


def _record_killed(spec: RunSpec, code: int, events: Optional["EventLog"], done, log) -> None:
    """The record of a run whose worker was killed (its exit ``code``): ``failed`` (unless it had recorded ``ok``),
    with its end event for the live view."""
    how, cause = _how(code), "out of memory, say" if code == -signal.SIGKILL else "a crash, say"
    record = record_unrun(spec, f"its sweep worker process was {how} during the run ({cause}; --retry-failed "
                                f"runs it again)")[0]
    if events is not None:
        events.ended(spec, record)
    done(spec, record)
    name = f"{label_of(spec)} {spec.speedup:g}x seed {spec.seed}"
    log(f"run {name}: its worker process was {how}; "
        + ("recorded as failed, the sweep goes on" if record.status != "ok" else "it had recorded its result"))


def _how_it_ended(workers: dict) -> str:
    """How the pool's worker processes ended, in a few words."""
    return ", ".join(f"pid {pid} {_how(p.exitcode)}" for pid, p in workers.items())


def _how(code: Optional[int]) -> str:
    if code is None:
        return "still running"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:  # (a real-time signal, say)
            return f"killed by signal {-code}"
    return "stopped by SIGTERM" if code == 128 + signal.SIGTERM else f"ended with exit status {code}"


def _remove_stale(specs: list[RunSpec]) -> None:
    """What the method clients of processes killed outright left (:meth:`SocketClient.remove_stale`)."""
    for runner in sorted({spec.runner for spec in specs} - {"inprocess"}):
        client_class(runner).remove_stale()


def _killed_runs(workers: dict, claims, finished: set[int]) -> dict[int, int]:
    """The runs whose worker died of a signal or an exit status other than a stop's (``run index -> its worker's
    exit code``). A
    worker that does not end (stopped with SIGSTOP: the executor's SIGTERM waits) is killed, its run not blamed."""
    ours = set()
    for pid, process in workers.items():
        process.join(30)
        if process.is_alive():
            process.kill()
            process.join(5)
            ours.add(pid)
    runs = {}
    for pid, process in workers.items():
        code = process.exitcode
        if pid in ours or code in (None, 0, 128 + signal.SIGTERM, -signal.SIGTERM):
            continue  # stopped by the executor, as it stops every worker of a broken pool
        runs.update({i: code for i in range(len(claims)) if claims[i] == pid and i not in finished})
    return runs


def _pool_run(index: int, spec: RunSpec, threads: int, events: Optional["EventLog"],
              next_spec: Optional[RunSpec]) -> ResultRecord:
    _claims[index] = os.getpid()
    return _run_one(spec, threads, events, None, next_spec)


#: this process is a sweep's pool worker (:func:`_worker_start`)
_worker = False
_claims = None


def _worker_start(parent: int, claims) -> None:
    """A pool worker, like the CLI (:func:`harness.cli.main`), unwinds on SIGTERM: its run in flight closes
    its method's process or container and exchange folder (and leaves no record: it runs again next time),
    it starts no other run (:func:`~harness.stopping.check`), and its spare is killed as the worker exits.
    It stops so when the sweep's process is gone too (killed with SIGKILL, say)."""
    global _worker, _claims
    _worker, _claims = True, claims
    stopping.die_with(parent)
    stopping.install()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the sweep's process, which stops its workers


def _stop(pool: ProcessPoolExecutor, stopped: bool) -> None:
    """The sweep ends early: no queued run starts. ``stopped`` (SIGTERM, Ctrl-C): the runs in flight are
    stopped too, each worker unwinding as the CLI does, before the pool's exit returns; otherwise (a run
    raised) they finish and are recorded."""
    # (the executor has no public way to stop its workers, and forgets them at shutdown)
    workers = list((pool._processes or {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for process in workers if stopped else ():
        if process.is_alive():
            process.terminate()
