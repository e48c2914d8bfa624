"""Result records on disk: validated when written and when read, written atomically."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Optional

from pydantic import ValidationError

from harness.errors import HarnessError
from specs.base import explain, sha256_json
from specs.result import ResultRecord

RESULT_FILE = "result.json"


def run_key(track_hash: str, method_id: str, method_version: str, image_digest: Optional[str],
            regularizer: Optional[str], speedup: float, strategy: str, seed: int,
            hyperparameters: Optional[dict] = None, reg_hyperparameters: Optional[dict] = None,
            recipe: Optional[tuple[str, str]] = None) -> str:
    """Canonical identity of a run (its result is unique per key): track hash, method id, version,
    image digest and resolved hyperparameters, regularizer (``id@version``) and its hyperparameters,
    speedup, strategy, seed, and (recipe-swap runs only) the retraining recipe's name and hash."""
    ident = {"track": track_hash, "method": [method_id, method_version, image_digest, hyperparameters or {}],
             "regularizer": [regularizer, reg_hyperparameters or {}] if regularizer else None,
             "speedup": float(speedup), "strategy": strategy, "seed": int(seed)}
    if recipe is not None:
        ident["recipe"] = list(recipe)
    return sha256_json(ident)


def atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.chmod(tmp, 0o644)  # mkstemp creates 0600; results are meant to be shared
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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

