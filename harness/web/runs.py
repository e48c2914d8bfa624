"""What the store holds, seen from the server: records (re-read only when the store changed) and
each run's live state from its event log."""

from __future__ import annotations

import os
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from harness.orchestration.events import events_path, last_attempt, read_events
from harness.store import RESULT_FILE, Store
from specs.result import ResultRecord

RUN_KEY = re.compile(r"^[0-9a-f]{64}$")
#: files a run directory may offer for download (besides result.json, what the record's ``files`` lists)
MODEL_FILES = ("sparse.pt", "pruned.pt", "final.pt")


def valid_key(key: str) -> bool:
    return bool(RUN_KEY.match(key))


class StoreView:
    """The store's valid records by run key, reloaded when a track folder changed (a published run
    renames a directory into its track folder, which changes that folder's mtime)."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self._lock = threading.Lock()
        self._signature: Optional[tuple] = None
        self._store = Store()

    def _sig(self) -> tuple:
        try:
            entries = [(e.name, e.stat().st_mtime_ns) for e in os.scandir(self.root)
                       if e.is_dir() and not e.name.startswith(".")]
        except FileNotFoundError:
            return ()
        return tuple(sorted(entries))

    def store(self) -> Store:
        with self._lock:
            sig = self._sig()
            if sig != self._signature:
                self._store = Store.load(self.root) if self.root.exists() else Store()
                self._signature = sig
            return self._store

    def records(self) -> dict[str, ResultRecord]:
        return self.store().records

    def record(self, key: str) -> Optional[ResultRecord]:
        return self.records().get(key)

    def run_dir(self, key: str) -> Optional[Path]:
        path = self.store().paths.get(key)
        return path.parent if path else None

    def file(self, key: str, name: str) -> Optional[Path]:
        """A downloadable file of run ``key``: its record or a model the record lists; None otherwise.
        Only plain files directly inside the run directory qualify (no links, no sub-paths)."""
        record, run_dir = self.record(key), self.run_dir(key)
        if record is None or run_dir is None:
            return None
        allowed = {RESULT_FILE, *(f for f in record.files.values() if f in MODEL_FILES)}
        if name not in allowed:
            return None
        path = run_dir / name
        if path.is_symlink() or not path.is_file() or path.resolve().parent != run_dir.resolve():
            return None
        return path


@dataclass
class RunState:
    """A run as the pages show it."""

    key: str
    status: str  # queued, running, ok, failed, cancelled, interrupted
    record: Optional[ResultRecord] = None
    events: list[dict] = field(default_factory=list)  # of the latest attempt
    stage: Optional[str] = None
    done: Optional[int] = None
    total: Optional[int] = None

    def summary(self) -> dict:
        return {"key": self.key, "status": self.status, "stage": self.stage, "done": self.done, "total": self.total}


def run_state(store: StoreView, key: str, in_flight: bool) -> RunState:
    """``in_flight``: the run belongs to a plan that is queued or running now."""
    record = store.record(key)
    events = last_attempt(read_events(events_path(store.root, key))[0])
    started = events[0]["t"] if events and events[0].get("kind") == "start" else None
    ended = bool(events) and events[-1].get("kind") == "end"
    progress = [e for e in events if e.get("kind") == "progress"]
    last = progress[-1] if progress else {}
    state = RunState(key, "queued", record, events, last.get("stage"), last.get("done"), last.get("total"))
    interrupted = ended and events[-1].get("status") == "interrupted"
    if started is not None and not ended:
        state.status = "running" if in_flight else "interrupted"
    elif interrupted:  # its process was stopped: it runs again when its plan resumes
        state.status = "queued" if in_flight else (record.status if record is not None else "interrupted")
    elif record is not None:
        state.status = record.status
    elif ended:
        state.status = "failed"  # ended without a record: bad input seen where it ran (the end event says)
    elif not in_flight:
        state.status = "not run"
    return state
