"""The result store: a folder of run directories, one validated ``result.json`` each.

A run's identity is its run key (:func:`run_key`); its directory
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
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from pydantic import ValidationError

from harness.errors import HarnessError
from harness.files import atomic_write_text
from harness.labels import label_of
from harness.stopping import process_alive
from specs.base import explain, sha256_json
from specs.result import ResultRecord

if TYPE_CHECKING:
    from harness.methods import MethodSource
    from harness.protocol.run import RunSpec

RESULT_FILE = "result.json"
STAGING_PREFIX = ".staging-"
_STAGING = re.compile(r"\.staging-(\d+)(?:@([^@/]+)@)?")


def run_key(track_hash: str, method_id: str, method_version: str, image_digest: Optional[str],
            regularizer: Optional[str], speedup: float, strategy: str, seed: int,
            hyperparameters: Optional[dict] = None, reg_hyperparameters: Optional[dict] = None,
            recipe: Optional[tuple[str, str]] = None, *, base_sha256: str) -> str:
    """Canonical identity of a run (its result is unique per key): track hash, base checkpoint sha256,
    method id, version, image digest and resolved hyperparameters, regularizer (``id@version``) and its
    hyperparameters, speedup, strategy, seed, and (recipe-swap runs only) the retraining recipe's name
    and hash. Runs from two base checkpoints never share a key, so they are never taken for each other."""
    ident = {"track": track_hash, "base": base_sha256,
             "method": [method_id, method_version, image_digest, hyperparameters or {}],
             "regularizer": [regularizer, reg_hyperparameters or {}] if regularizer else None,
             "speedup": float(speedup), "strategy": strategy, "seed": int(seed)}
    if recipe is not None:
        ident["recipe"] = list(recipe)
    return sha256_json(ident)


def write_record(path: Path, record: ResultRecord) -> None:
    # round trip through the model: what lands on disk is exactly what a reader will accept
    text = record.model_dump_json(indent=2)
    ResultRecord.model_validate_json(text)
    atomic_write_text(path, text + "\n")


def read_record(path: Path) -> ResultRecord:
    try:
        return ResultRecord.model_validate_json(Path(path).read_text())
    except OSError as e:
        raise HarnessError(f"{path}: cannot read ({e.strerror})") from None
    except ValidationError as e:
        raise HarnessError(f"{path}: invalid result record: {explain(e)}") from None


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


def resolved_hyperparameters(source: "MethodSource", hp: dict) -> dict:
    """The method's defaults updated by ``hp``; unknown names and bad values are bad input."""
    try:
        return source.manifest.resolve_hyperparameters(hp)
    except ValueError as e:
        raise HarnessError(str(e)) from None


def image_digest_of(spec: "RunSpec", source: Optional["MethodSource"] = None) -> Optional[str]:
    """Under the docker runner, the content digest of the image ``source`` (default: the importance
    method) runs from; ``None`` under the other runners."""
    if spec.runner != "docker":
        return None
    from harness.runners.docker_runner import image_digest, image_tag
    source = source or spec.method
    image = spec.runner_options.get("image") if source is spec.method else None
    return image_digest(image or image_tag(source.manifest))


def run_key_of(spec: "RunSpec") -> str:
    """The canonical identity of the run ``spec`` describes (:func:`run_key`); a regularizer counts
    as ``id@version``; under docker the image digest is part of it, and always the base checkpoint's.

    Pure: the key is computed from resolved inputs only, so ``spec.base_sha256`` must be resolved
    (:func:`harness.protocol.run.with_base`, or :func:`harness.protocol.run.run_key_of`, which resolves it
    first); the store never loads, hashes or trains a base checkpoint."""
    if spec.base_sha256 is None:
        raise ValueError(f"run key of {run_dir_name(spec, '')[:-1]}: the base checkpoint's sha256 is not resolved "
                         f"(harness.protocol.run.with_base resolves it)")
    reg = spec.regularizer
    recipe = None if spec.recipe is None else (spec.recipe, spec.retrain_recipe().hash())
    return run_key(spec.track.hash(), spec.method.id, spec.method.manifest.version, image_digest_of(spec),
                   f"{reg.id}@{reg.manifest.version}" if reg else None, spec.speedup, spec.track.pruning.strategy,
                   spec.seed, resolved_hyperparameters(spec.method, spec.hyperparameters),
                   resolved_hyperparameters(reg, spec.reg_hyperparameters) if reg else None, recipe,
                   base_sha256=spec.base_sha256)


def run_dir_name(spec: "RunSpec", key: str) -> str:
    """``<method>[+<regularizer>]-<speedup>x-<strategy>[-<recipe>]-s<seed>-<key[:8]>``."""
    name = label_of(spec)
    recipe = f"-{spec.recipe}" if spec.recipe else ""
    return f"{name}-{spec.speedup:g}x-{spec.track.pruning.strategy}{recipe}-s{spec.seed}-{key[:8]}"


def run_dir(spec: "RunSpec", key: str) -> Path:
    """Where run ``spec`` (run key ``key``) lives: ``<out>/<track id>/<run dir name>``."""
    return Path(spec.out) / spec.track.id / run_dir_name(spec, key)


def recorded(spec: "RunSpec", key: str) -> Optional[ResultRecord]:
    """The record run ``spec`` (run key ``key``) already has in its store, if a valid one."""
    try:
        return read_record(run_dir(spec, key) / RESULT_FILE)
    except HarnessError:  # none, or unreadable (a new one replaces it)
        return None


def new_staging(target: Path) -> Path:
    """A fresh private staging directory beside run directory ``target``."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=staging_prefix(target.name), dir=target.parent))
    os.chmod(staging, 0o755)
    return staging


def publish(record: ResultRecord, staging: Path, target: Path) -> None:
    """Write ``record`` into ``staging`` and move the finished staging directory to ``target``, replacing
    an older run: the old directory is renamed away first, so readers see the old or the new run, never
    a mix."""
    write_record(staging / RESULT_FILE, record)
    trash = None
    if target.exists():
        trash = target.with_name(f".old-{target.name}-{os.getpid()}@{host_name()}")
        os.replace(target, trash)
    os.replace(staging, target)
    if trash is not None:
        shutil.rmtree(trash, ignore_errors=True)


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
                other = store.records[record.run_key].provenance.checkpoint_sha256
                why = "" if other == record.provenance.checkpoint_sha256 else \
                    " from another base checkpoint (a record keyed before run keys held the base: regenerate it)"
                store.invalid.append(f"{path}: duplicate run key {record.run_key[:12]}{why} "
                                     f"(also {store.paths[record.run_key]})")
                continue
            store.records[record.run_key] = record
            store.paths[record.run_key] = path
        return store

    def ok(self) -> list[ResultRecord]:
        return [r for r in self.records.values() if r.status == "ok"]


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
            stale = (match.group(2) or here) == here and not process_alive(int(match.group(1)))
        if stale:
            shutil.rmtree(path, ignore_errors=True)
            removed += 1
    return removed
