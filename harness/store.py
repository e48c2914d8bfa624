"""The result store: a folder of run directories, one validated ``result.json`` each.

A run's identity is its run key (:func:`harness.results.run_key`); its directory
name ends with the key's first 8 hex digits. Runs are written in a hidden
staging directory (``.staging-<pid>@<host>@<run>-...``) and renamed into
place, so a reader sees a finished run or nothing; staging left behind by a
killed process is ignored by readers and removed by :func:`clean_stale_staging`
(on a shared file system only by the host that wrote it: a process id means
nothing on another node).
"""

from __future__ import annotations

import os
import re
import shutil
import socket
from dataclasses import dataclass, field
from pathlib import Path

from harness.errors import HarnessError
from harness.results import RESULT_FILE, read_record
from specs.result import ResultRecord

STAGING_PREFIX = ".staging-"
_STAGING = re.compile(r"\.staging-(\d+)(?:@([^@/]+)@)?")


def host_name() -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", socket.gethostname()) or "localhost"


def staging_prefix(run_name: str) -> str:
    """The name prefix of a staging directory for run ``run_name`` written by this process."""
    return f"{STAGING_PREFIX}{os.getpid()}@{host_name()}@{run_name}-"


def find_records(root: Path) -> list[Path]:
    """Every ``result.json`` under ``root``, skipping hidden (staging, trash) directories."""
    root = Path(root)
    out = []
    for path in root.rglob(RESULT_FILE):
        rel = path.relative_to(root).parts
        if not any(part.startswith(".") for part in rel):
            out.append(path)
    return sorted(out)


@dataclass
class Store:
    """What a results folder holds: valid records by run key, and files that failed validation."""

    records: dict[str, ResultRecord] = field(default_factory=dict)
    paths: dict[str, Path] = field(default_factory=dict)
    invalid: list[str] = field(default_factory=list)

    @classmethod
    def load(cls, root: Path) -> "Store":
        store = cls()
        for path in find_records(root):
            try:
                record = read_record(path)
            except HarnessError as e:
                store.invalid.append(str(e))
                continue
            if record.run_key in store.records:
                store.invalid.append(f"{path}: duplicate run key {record.run_key[:12]} "
                                     f"(also {store.paths[record.run_key]})")
                continue
            store.records[record.run_key] = record
            store.paths[record.run_key] = path
        return store

    def ok(self) -> list[ResultRecord]:
        return [r for r in self.records.values() if r.status == "ok"]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale_staging(root: Path, run_name: str | None = None) -> int:
    """Remove staging directories whose writer process (on this host) is gone; with ``run_name``,
    every staging directory of that run, whatever host wrote it (its job is known to be over).
    Returns how many were removed."""
    removed, here = 0, host_name()
    for path in Path(root).rglob(f"{STAGING_PREFIX}*"):
        match = _STAGING.match(path.name)
        if not path.is_dir() or match is None:
            continue
        if run_name is not None:
            stale = path.name.startswith(f"{match.group(0)}{run_name}-") if match.group(2) else False
        else:
            stale = (match.group(2) or here) == here and not _pid_alive(int(match.group(1)))
        if stale:
            shutil.rmtree(path, ignore_errors=True)
            removed += 1
    return removed
