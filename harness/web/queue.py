"""The plan queue: plans submitted through the platform, run one after another by the sweep.

Each plan is a file ``<store>/.web/plans/<id>.json`` (:class:`PlanRecord`), written only by the server
process. A dispatcher thread takes the next queued plan (the user whose last plan started longest
ago goes first) and runs it in a worker process (``python -m harness.web.worker plan``) that calls the
sweep machinery with the server's executor and ``--jobs``: there is no second scheduler, and runs land
in the store like the CLI's. The worker holds a lock on the plan while it runs and dies with the
server.

After a restart, plans that were running are queued again and resumed: the sweep skips every run
already recorded, so nothing runs twice; a run that was interrupted had no record and runs again.

A run that several plans want (the same run key: users asked for the same thing) belongs to all of
them. A user who cancels it withdraws their plans' interest; it stops (recorded ``cancelled`` by every
user who withdrew) only once no plan in the queue still wants it, or at once when an admin cancels it.
Cancelling a plan writes its stop file (no further run starts) and withdraws from its runs in flight:
those no other plan wants stop, and if the worker has not ended within a grace period it is killed and
what was still in flight is recorded ``cancelled``; a run another plan wants finishes for that plan.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Literal, Optional

from pydantic import Field

from harness.orchestration.events import append_event, events_path, request_cancel
from harness.files import atomic_write_text
from harness.web.config import ServerConfig
from harness.web.planning import PlanRequest
from harness.web.runs import StoreView, run_state
from specs.base import Strict

PlanState = Literal["queued", "running", "finished", "failed", "cancelled"]
ACTIVE = ("queued", "running")
#: seconds a cancelled plan's worker gets to record its runs in flight before it is killed
CANCEL_GRACE_S = 20.0


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


class PlanRun(Strict):
    key: str
    name: str  # method[+regularizer]
    track: str
    speedup: float
    seed: int
    strategy: str


class PlanRecord(Strict):
    id: str
    owner: str
    request: PlanRequest
    runs: list[PlanRun]
    state: PlanState = "queued"
    created_at: str
    started_at: Optional[str] = None
    finished_at: Optional[str] = None
    error: Optional[str] = None
    cancelled_by: Optional[str] = None
    resumed: int = 0  # times it was resumed after a server restart
    withdrawn: list[str] = Field(default_factory=list, description="run keys its owner cancelled (a run another "
                                                                   "plan wants goes on for that plan)")


class QueueLimit(Exception):
    """A user's queue limit would be exceeded (the API answers 429)."""


class PlanQueue:
    def __init__(self, cfg: ServerConfig, store: StoreView):
        self.cfg, self.store = cfg, store
        self.dir = cfg.web_dir / "plans"
        self.dir.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._proc: Optional[subprocess.Popen] = None
        self._current: Optional[str] = None
        self._cancel_at: Optional[float] = None
        self._last_started: dict[str, float] = {}
        self.plans: dict[str, PlanRecord] = {}
        for path in sorted(self.dir.glob("*.json")):
            try:
                plan = PlanRecord.model_validate_json(path.read_text())
            except (OSError, ValueError):
                continue
            if plan.state == "running":  # the server stopped while it ran: resume it
                plan = plan.model_copy(update={"state": "queued", "resumed": plan.resumed + 1})
                self._save(plan)
            self.plans[plan.id] = plan
        self.run_index: dict[str, list[str]] = {}
        for plan in self.plans.values():
            self._index(plan)

    # -- persistence ---------------------------------------------------------------------------
    def _save(self, plan: PlanRecord) -> None:
        atomic_write_text(self.dir / f"{plan.id}.json", plan.model_dump_json(indent=1) + "\n")
        self.plans[plan.id] = plan

    def _update(self, plan_id: str, **changes) -> PlanRecord:
        with self._lock:
            plan = self.plans[plan_id].model_copy(update=changes)
            self._save(plan)
            return plan

    def _index(self, plan: PlanRecord) -> None:
        for run in plan.runs:
            self.run_index.setdefault(run.key, [])
            if plan.id not in self.run_index[run.key]:
                self.run_index[run.key].append(plan.id)

    def log_path(self, plan_id: str) -> Path:
        return self.dir / f"{plan_id}.log"

    def stop_path(self, plan_id: str) -> Path:
        return self.dir / f"{plan_id}.stop"

    # -- queries -------------------------------------------------------------------------------
    def get(self, plan_id: str) -> Optional[PlanRecord]:
        return self.plans.get(plan_id)

    def list(self) -> list[PlanRecord]:
        return sorted(self.plans.values(), key=lambda p: p.id, reverse=True)

    def plans_of_run(self, key: str) -> list[PlanRecord]:
        return [self.plans[p] for p in self.run_index.get(key, []) if p in self.plans]

    def in_flight(self, key: str) -> bool:
        return any(p.state in ACTIVE for p in self.plans_of_run(key))

    def state(self, key: str):
        return run_state(self.store, key, self.in_flight(key))

    def pending_runs(self, owner: str) -> int:
        """Runs of ``owner``'s queued and running plans that have no record yet."""
        records = self.store.records()
        keys = {r.key for p in self.plans.values() if p.owner == owner and p.state in ACTIVE for r in p.runs}
        return sum(k not in records for k in keys)

    # -- changes -------------------------------------------------------------------------------
    def submit(self, owner: str, request: PlanRequest, runs: list[PlanRun], max_queued_runs: int) -> PlanRecord:
        with self._lock:
            active = [p for p in self.plans.values() if p.owner == owner and p.state in ACTIVE]
            if len(active) >= self.cfg.max_plans_queued:
                raise QueueLimit(f"{owner} has {len(active)} plans queued or running (limit "
                                 f"{self.cfg.max_plans_queued}): wait for one to finish or cancel one")
            records = self.store.records()
            new = sum(r.key not in records for r in runs)
            pending = self.pending_runs(owner)
            if pending + new > max_queued_runs:
                raise QueueLimit(f"{owner} has {pending} runs waiting or running and this plan adds {new} (limit "
                                 f"{max_queued_runs}): wait, cancel, or ask for a higher limit")
            plan_id = dt.datetime.now().strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(3)
            plan = PlanRecord(id=plan_id, owner=owner, request=request, runs=runs, created_at=now())
            self._save(plan)
            self._index(plan)
        self._wake.set()
        return plan

    def wanted_by(self, key: str, but: Optional[str] = None) -> list[PlanRecord]:
        """The queued or running plans (other than plan ``but``) that still want run ``key``."""
        return [p for p in self.plans_of_run(key) if p.state in ACTIVE and p.id != but and key not in p.withdrawn]

    def _withdraw(self, key: str, plans: list[PlanRecord]) -> None:
        for plan in plans:
            if key not in plan.withdrawn:
                self._update(plan.id, withdrawn=[*plan.withdrawn, key])

    def _stop(self, key: str, who: str) -> str:
        signalled = request_cancel(self.store.root, key, f"cancelled by {who} at {now()}")
        return "stopping now" if signalled else "will stop before its next step (or not start)"

    def cancel_run(self, key: str, who: str, admin: bool = False) -> str:
        """``who`` cancels run ``key``: their active plans withdraw from it, and it stops once no plan wants it
        any more (an admin stops it at once); returns what happened, in words."""
        with self._lock:
            plans = self.plans_of_run(key)
            self._withdraw(key, [p for p in plans if p.owner == who and p.state in ACTIVE])
            others = self.wanted_by(key)
            if others and not admin:
                owners = sorted({p.owner for p in others})
                return f"withdrawn from your plans; it goes on for {len(others)} other plan(s) of {', '.join(owners)}"
            withdrew = sorted({p.owner for p in self.plans_of_run(key) if key in p.withdrawn} | {who})
            return self._stop(key, f"{who} (admin)" if admin and others else ", ".join(withdrew))

    def cancel_plan(self, plan_id: str, who: str) -> PlanRecord:
        with self._lock:
            plan = self.plans[plan_id]
            if plan.state not in ACTIVE:
                return plan
            if plan.state == "queued":
                return self._update(plan_id, state="cancelled", cancelled_by=who, finished_at=now())
            self.stop_path(plan_id).write_text(who)
            shared = False
            for run in plan.runs:  # the runs in flight stop (here: now; on a cluster node: at their next step)
                if self.state(run.key).status == "running":
                    if self.wanted_by(run.key, but=plan_id):
                        shared = True  # it finishes for the other plans; the worker starts nothing new
                    else:
                        self._stop(run.key, who)
            if not shared:
                self._cancel_at = time.monotonic() + CANCEL_GRACE_S
            return self._update(plan_id, cancelled_by=who)

    # -- the dispatcher ------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="plan-dispatcher", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the dispatcher and the running worker (its plan resumes at the next start)."""
        self._stopping.set()
        self._wake.set()
        proc = self._proc
        if proc is not None and proc.poll() is None:
            _kill_group(proc, signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                _kill_group(proc, signal.SIGKILL)
        if self._thread is not None:
            self._thread.join(timeout)

    def _next(self) -> Optional[PlanRecord]:
        with self._lock:
            queued = sorted((p for p in self.plans.values() if p.state == "queued"), key=lambda p: p.id)
            if not queued:
                return None
            return min(queued, key=lambda p: (self._last_started.get(p.owner, 0.0), p.id))

    def _loop(self) -> None:
        while not self._stopping.is_set():
            plan = self._next()
            if plan is None:
                self._wake.wait(1.0)
                self._wake.clear()
                continue
            try:
                self._run(plan)
            except Exception as e:  # never let the dispatcher die: the plan fails with the reason
                self._update(plan.id, state="failed", error=f"internal error: {e}", finished_at=now())

    def _run(self, plan: PlanRecord) -> None:
        self._last_started[plan.owner] = time.monotonic()
        self.stop_path(plan.id).unlink(missing_ok=True)
        self._update(plan.id, state="running", started_at=plan.started_at or now(), error=None)
        self._current, self._cancel_at = plan.id, None
        log = open(self.log_path(plan.id), "ab")
        try:
            env = {**os.environ, "PBENCH_NO_PROGRESS": "1", "PYTHONUNBUFFERED": "1"}
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "harness.web.worker", "plan", str(self.cfg.store), plan.id,
                 "--parent", str(os.getpid())],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        finally:
            log.close()
        proc = self._proc
        while proc.poll() is None:
            if self._stopping.is_set():
                return  # stop() ends the worker; the plan stays "running" on disk and resumes next time
            if self._cancel_at is not None and time.monotonic() > self._cancel_at:
                _kill_group(proc, signal.SIGKILL)
                proc.wait()
                break
            time.sleep(0.2)
        self._proc, self._current = None, None
        self._finish(plan.id, proc.returncode)

    def _finish(self, plan_id: str, code: int) -> None:
        plan = self.plans[plan_id]
        if plan.cancelled_by is not None:
            self._record_cancelled_in_flight(plan)
            self._update(plan_id, state="cancelled", finished_at=now())
        elif code == 0:
            self._update(plan_id, state="finished", finished_at=now())
        else:
            self._update(plan_id, state="failed", finished_at=now(), error=self._last_log_line(plan_id, code))
        self.stop_path(plan_id).unlink(missing_ok=True)

    def _record_cancelled_in_flight(self, plan: PlanRecord) -> None:
        """Runs whose worker was killed before it could record them: recorded ``cancelled`` here."""
        from harness.orchestration.events import cancel_path
        from harness.protocol.run import record_unrun
        from harness.store import clean_stale_staging, run_dir_name
        from harness.web.planning import resolve_request
        records = self.store.records()
        dangling = [r for r in plan.runs if r.key not in records
                    and run_state(self.store, r.key, in_flight=False).status == "interrupted"]
        if not dangling:
            return
        try:
            from harness.web.uploads import Uploads
            resolved = resolve_request(plan.request, self.cfg, Uploads(self.cfg), check_device=False)
        except Exception:
            return
        by_key = dict(zip(resolved.keys, resolved.specs))
        for run in dangling:
            spec = by_key.get(run.key)
            if spec is None:
                continue
            clean_stale_staging(Path(spec.out) / spec.track.id, run_dir_name(spec, run.key))
            record, _ = record_unrun(spec, f"cancelled by {plan.cancelled_by} at {now()}", status="cancelled")
            append_event(events_path(self.store.root, run.key), {"kind": "end", "status": record.status,
                                                                 "error": record.error})
            cancel_path(self.store.root, run.key).unlink(missing_ok=True)

    def _last_log_line(self, plan_id: str, code: int) -> str:
        try:
            lines = [ln for ln in self.log_path(plan_id).read_text(errors="replace").splitlines() if ln.strip()]
        except OSError:
            lines = []
        error = [ln for ln in lines if ln.startswith("error: ")]
        if error:
            return error[-1][len("error: "):]
        return (lines[-1].strip()[:300] if lines else "") or f"the plan's worker exited with code {code}"


def _kill_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def plan_lock(cfg: ServerConfig, plan_id: str):
    """The worker's lock on its plan (an open file; closing it, or the worker's death, releases it)."""
    f = open(cfg.web_dir / "plans" / f"{plan_id}.lock", "w")
    fcntl.flock(f, fcntl.LOCK_EX)
    return f
