"""Live run events: what each run is doing, readable while it runs, from any process or node.

Each run key has one JSON-lines file in the result store's hidden folder,
``<store>/.events/<run key>.jsonl`` (readers of records skip hidden folders). One line per event,
appended by the process that runs the run (a sweep worker, a Slurm job):

- ``{"t": unix s, "kind": "start", "pid", "host", "proc_start", "name", "track", "speedup", "seed"}``
  when a run (or a retry of it) begins;
- ``{"t", "kind": "progress", "stage", "done", "total", **info}`` for every ``progress(stage, done,
  total, **info)`` call of the protocol (:data:`harness.protocol.train.Progress`);
- ``{"t", "kind": "end", "status", "error"?, "final"?}`` when it ends: the record's status, ``error``
  (bad input where it ran: no record), or ``interrupted`` (its process was stopped: it runs again
  when its sweep resumes); a run whose process was killed outright has no end event until whoever
  records its end writes one.

Lines are small single ``write()`` calls on an ``O_APPEND`` file, so concurrent writers never
interleave within a line; a reader only takes complete lines (:func:`read_events`).

Cancellation: :func:`request_cancel` leaves a marker ``<run key>.cancel`` (its text: the reason) and,
when the run is running on this host, sends its process ``SIGUSR1``; the run then stops at once
(otherwise at its next progress call) and is recorded ``cancelled`` with the reason. A ``stop`` file
(:attr:`EventLog.stop_file`) stops a whole sweep: a run that would start raises :class:`SweepStopped`.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from harness.labels import label_of
from harness.store import clean_stale_staging, host_name, run_dir_name, run_key_of

if TYPE_CHECKING:
    from harness.protocol.run import RunSpec
    from harness.protocol.train import Progress
    from specs.result import ResultRecord

EVENTS_DIR = ".events"
#: the longest line :func:`read_events` accepts (a corrupt file cannot make a reader hold it all)
MAX_LINE = 64 * 1024


class RunCancelled(BaseException):
    """A user cancelled the run (a BaseException: the protocol must not record it as the method's failure)."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class SweepStopped(BaseException):
    """The sweep was asked to stop (its stop file exists): no further run starts."""


def events_path(out: Path, key: str) -> Path:
    return Path(out) / EVENTS_DIR / f"{key}.jsonl"


def cancel_path(out: Path, key: str) -> Path:
    return Path(out) / EVENTS_DIR / f"{key}.cancel"


def append_event(path: Path, event: dict) -> None:
    """Append one event (``t`` is set if missing) as one line."""
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps({"t": time.time(), **event}, separators=(",", ":"), default=str) + "\n"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def read_events(path: Path, offset: int = 0) -> tuple[list[dict], int]:
    """The complete events after byte ``offset`` and the offset after the last one read."""
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            data = f.read()
    except FileNotFoundError:
        return [], offset
    events, pos = [], 0
    while True:
        nl = data.find(b"\n", pos)
        if nl < 0:
            if len(data) - pos > MAX_LINE:  # a torn giant line: skip it rather than wait forever
                return events, offset + len(data)
            return events, offset + pos
        line = data[pos:nl]
        pos = nl + 1
        if len(line) > MAX_LINE:
            continue
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict):
            events.append(event)


def last_attempt(events: list[dict]) -> list[dict]:
    """The events of the latest attempt (from the last ``start``)."""
    starts = [i for i, e in enumerate(events) if e.get("kind") == "start"]
    return events[starts[-1]:] if starts else events


def _proc_start(pid: int) -> Optional[str]:
    """The start time of process ``pid`` in clock ticks since boot (Linux), to tell it from a reused pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def running_process(events: list[dict]) -> Optional[int]:
    """The pid of the process (on this host) running the latest attempt, if it is still that process."""
    attempt = last_attempt(events)
    if not attempt or attempt[0].get("kind") != "start" or attempt[-1].get("kind") == "end":
        return None
    start = attempt[0]
    pid = start.get("pid")
    if start.get("host") != host_name() or not isinstance(pid, int) or start.get("proc_start") is None:
        return None
    return pid if _proc_start(pid) == start["proc_start"] else None


def request_cancel(out: Path, key: str, reason: str) -> bool:
    """Ask run ``key`` to stop and be recorded ``cancelled`` with ``reason``; True if its process was
    signalled (it stops now), False if it stops when it next starts or reports progress."""
    marker = cancel_path(out, key)
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(reason)
    pid = running_process(read_events(events_path(out, key))[0])
    if pid is None:
        return False
    try:
        os.kill(pid, signal.SIGUSR1)
    except OSError:
        return False
    return True


def cancel_reason(out: Path, key: str) -> Optional[str]:
    try:
        return cancel_path(out, key).read_text().strip() or "cancelled"
    except OSError:
        return None


class RunEvents:
    """The progress callback of one run: appends its events and raises :class:`RunCancelled` once the
    run is asked to stop. ``then`` is called too (e.g. a terminal display)."""

    _current: Optional["RunEvents"] = None  # the run this process is running (for SIGUSR1)

    def __init__(self, out: Path, key: str, then: Optional["Progress"] = None):
        self.out, self.key, self.then = Path(out), key, then
        self.path = events_path(out, key)

    def cancelled(self) -> Optional[str]:
        return cancel_reason(self.out, self.key)

    def start(self, spec: "RunSpec") -> None:
        name = label_of(spec)
        append_event(self.path, {"kind": "start", "pid": os.getpid(), "host": host_name(),
                                 "proc_start": _proc_start(os.getpid()), "name": name, "track": spec.track.id,
                                 "speedup": spec.speedup, "seed": spec.seed})
        RunEvents._current = self
        _install_signal_handler()

    def __call__(self, stage: str, done: int, total: int, **info) -> None:
        append_event(self.path, {"kind": "progress", "stage": stage, "done": done, "total": total, **info})
        if self.then:
            self.then(stage, done, total, **info)
        reason = self.cancelled()
        if reason is not None:
            raise RunCancelled(reason)

    def end(self, status: str, error: Optional[str] = None, final: Optional[float] = None) -> None:
        if RunEvents._current is self:
            RunEvents._current = None
        append_event(self.path, {"kind": "end", "status": status, "error": error, "final": final})


_handler_installed = False


def _on_sigusr1(signum, frame) -> None:
    run = RunEvents._current
    if run is None:
        return
    reason = run.cancelled()
    if reason is not None:
        RunEvents._current = None  # raise once; the run's clean-up must not be interrupted again
        raise RunCancelled(reason)


def _install_signal_handler() -> None:
    global _handler_installed
    if _handler_installed or threading.current_thread() is not threading.main_thread():
        return  # (signals reach the main thread only: elsewhere cancelling waits for the next progress call)
    signal.signal(signal.SIGUSR1, _on_sigusr1)
    _handler_installed = True


@dataclass(frozen=True)
class EventLog:
    """Runs runs with live events (picklable: sweep workers and Slurm jobs get a copy).

    ``stop_file``: when it exists, a run about to start raises :class:`SweepStopped` instead."""

    out: Path
    stop_file: Optional[Path] = None

    def ended(self, spec: "RunSpec", record: "ResultRecord") -> None:
        """The ``end`` event of a run recorded by another process than its own (its sweep worker was killed)."""
        append_event(events_path(self.out, run_key_of(spec)), {"kind": "end", "status": record.status,
                                                               "error": record.error, "final": record.metric.final})

    def run(self, spec: "RunSpec", then: Optional["Progress"] = None) -> "ResultRecord":
        """Run ``spec`` through the protocol with events; a cancelled run is recorded ``cancelled``.
        Bad input (HarnessError) and a stopped job propagate, after an ``end`` event."""
        from harness.protocol.run import evaluate, record_unrun
        if self.stop_file is not None and Path(self.stop_file).exists():
            raise SweepStopped(str(self.stop_file))
        key = run_key_of(spec)
        events = RunEvents(self.out, key, then)
        events.start(spec)
        try:
            reason = events.cancelled()
            if reason is not None:
                raise RunCancelled(reason)
            record = evaluate(spec, events)[0]
        except RunCancelled as c:
            RunEvents._current = None
            clean_stale_staging(Path(spec.out) / spec.track.id, run_dir_name(spec, key))
            record = record_unrun(spec, c.reason, status="cancelled")[0]
        except (KeyboardInterrupt, SystemExit):  # the process is being stopped: the run resumes later
            events.end("interrupted")
            raise
        except BaseException as e:
            events.end("error", error=str(e).splitlines()[0][:300] if str(e) else type(e).__name__)
            raise
        cancel_path(self.out, key).unlink(missing_ok=True)  # consumed (or too late: the run had finished)
        events.end(record.status, record.error, record.metric.final)
        return record
