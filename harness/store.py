"""The result store: a folder of run directories, one validated ``result.json`` each.

A run's identity is its run key (:func:`harness.results.run_key`); its directory
name ends with the key's first 8 hex digits. Runs are written in a hidden
staging directory (``.staging-<pid>-...``) and renamed into place, so a reader
sees a finished run or nothing; staging left behind by a killed process is
ignored by readers and removed by :func:`clean_stale_staging`.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from harness.errors import HarnessError
from harness.results import RESULT_FILE, read_record
from specs.result import ResultRecord

STAGING_PREFIX = ".staging-"


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


def clean_stale_staging(root: Path) -> int:
    """Remove staging directories whose writer process is gone; returns how many."""
    removed = 0
    for path in Path(root).rglob(f"{STAGING_PREFIX}*"):
        if not path.is_dir():
            continue
        try:
            pid = int(path.name[len(STAGING_PREFIX):].split("-", 1)[0])
        except ValueError:
            continue
        if not _pid_alive(pid):
            shutil.rmtree(path, ignore_errors=True)
            removed += 1
    return removed
