"""Base checkpoints: a local file with a known sha256, or trained by the harness
with the track's pretrain recipe and cached by the hash of everything that
determines it (model, dataset, recipe, seed)."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
import torch.nn as nn

from harness.data import DatasetBundle
from harness.errors import HarnessError
from harness.models import build_model as build
from harness.provenance import sha256_file
from harness.store import atomic_write_text
from harness.protocol.train import Progress, evaluate_top1, train
from specs.track import Checkpoint, TrackConfig

#: bump when the training loop changes in a way that changes trained weights
TRAINER_VERSION = 2  # 2: initial weights seeded by pretrain_seed alone


def default_cache_dir() -> Path:
    return Path(os.environ.get("PBENCH_CACHE", Path.home() / ".cache" / "pbench"))


@dataclass
class BaseCheckpoint:
    model: nn.Module
    path: Path
    sha256: str
    metric: float


def build_model(track: TrackConfig, data: DatasetBundle) -> nn.Module:
    return build(track.model, num_classes=data.num_classes, in_chans=data.in_chans, image_size=data.image_size)


def pretrain_key(track: TrackConfig) -> str:
    ident = {"model": track.model.model_dump(mode="json"), "dataset": track.dataset.model_dump(mode="json"),
             "recipe": track.checkpoint.pretrain.model_dump(mode="json"), "seed": track.checkpoint.pretrain_seed,
             "trainer": TRAINER_VERSION}
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()


def _load_state(model: nn.Module, path: Path) -> None:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(state)
    except Exception as e:  # corrupt file, wrong architecture
        raise HarnessError(f"{path}: cannot load as a {type(model).__name__} state dict ({type(e).__name__})") from None


def verified_file(ck: Checkpoint) -> tuple[Path, str]:
    """A track's published checkpoint file and its sha256, checked against the track's."""
    path = Path(os.path.expanduser(ck.path))
    if not path.is_file():
        raise HarnessError(f"base checkpoint not found: expected {path}"
                           + (f" (sha256 {ck.sha256})" if ck.sha256 else ""))
    digest = sha256_file(path)
    if ck.sha256 and digest != ck.sha256:
        raise HarnessError(f"{path}: sha256 {digest} does not match the track's {ck.sha256}")
    return path, digest


def load_base(track: TrackConfig, data: DatasetBundle, cache_dir: Optional[Path] = None, device: str = "cpu",
              progress: Optional[Progress] = None) -> BaseCheckpoint:
    ck = track.checkpoint
    with torch.random.fork_rng(devices=[]):  # the initial weights depend on pretrain_seed only, never on
        torch.manual_seed(ck.pretrain_seed)  # whatever the caller's generator state happens to be
        model = build_model(track, data)
    if ck.path is not None:
        path, digest = verified_file(ck)
        _load_state(model, path)
        return BaseCheckpoint(model.eval(), path, digest, _base_metric(model, data, path, digest, device))

    cache = Path(cache_dir or default_cache_dir()) / "checkpoints"
    cache.mkdir(parents=True, exist_ok=True)
    key = pretrain_key(track)
    path = cache / f"{track.model.slug()}-{track.dataset.name}-{key[:16]}.pt"
    with open(cache / f".{path.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # concurrent runs train a missing checkpoint once
        if not path.exists():
            train(model, data.train, ck.pretrain, seed=ck.pretrain_seed, device=device, progress=progress,
                  stage="pretrain")
            tmp = path.with_suffix(".tmp")
            torch.save({k: v.cpu() for k, v in model.state_dict().items()}, tmp)
            os.replace(tmp, path)
        else:
            _load_state(model, path)
    digest = sha256_file(path)
    return BaseCheckpoint(model.eval(), path, digest, _base_metric(model, data, path, digest, device))


def _base_metric(model: nn.Module, data: DatasetBundle, path: Path, digest: str, device: str) -> float:
    """Top-1 of the base model on the test split, cached beside the checkpoint (keyed by its sha256)."""
    sidecar = path.with_name(path.name + ".metric.json")
    try:
        cached = json.loads(sidecar.read_text())
        if cached.get("sha256") == digest and cached.get("dataset") == data.name:
            return float(cached["top1"])
    except (OSError, ValueError, KeyError):
        pass
    top1 = evaluate_top1(model, data.test, device=device)
    try:
        atomic_write_text(sidecar, json.dumps({"sha256": digest, "dataset": data.name, "top1": top1}))
    except OSError:
        pass  # read-only checkpoint folder: recompute next time
    return top1
