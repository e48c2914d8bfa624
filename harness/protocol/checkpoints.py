"""Base checkpoints: a local file with a known sha256, or trained by the harness
with the track's pretrain recipe and cached by the hash of everything that
determines it (model, dataset, recipe, seed)."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from contextlib import nullcontext
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
from harness.protocol import distributed
from harness.protocol.train import Progress, evaluate_top1, train_bundle
from specs.base import canonical
from specs.track import Checkpoint, TrackConfig

#: bump when the training loop changes in a way that changes trained weights (the key names the file, and
#: torch.save writes the name into the archive: a new key is a new sha256 even for equal weights)
TRAINER_VERSION = 2  # 2: initial weights seeded by pretrain_seed alone
#: in-memory random crops pad with the raw zero pixel (torchvision's RandomCrop(padding)) since this version;
#: part of the key of recipes that crop only, so that checkpoints trained without crops keep their key
CROP_VERSION = 2


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
    ident = {"model": canonical(track.model), "dataset": canonical(track.dataset),
             "recipe": canonical(track.checkpoint.pretrain), "seed": track.checkpoint.pretrain_seed,
             "trainer": TRAINER_VERSION}
    if track.checkpoint.pretrain.augmentation != "none":
        ident["crop"] = CROP_VERSION
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()


def trained_path(track: TrackConfig, cache_dir: Optional[Path] = None) -> Path:
    """Where the base checkpoint a track's pretrain recipe trains is cached (it may not exist yet)."""
    cache = Path(cache_dir or default_cache_dir()) / "checkpoints"
    return cache / f"{track.model.slug()}-{track.dataset.name}-{pretrain_key(track)[:16]}.pt"


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

    path = trained_path(track, cache_dir)
    cache = path.parent
    cache.mkdir(parents=True, exist_ok=True)
    w = distributed.world()
    # concurrent runs train a missing checkpoint once; in a distributed run rank 0 holds the lock and
    # decides, and every rank trains (data parallel)
    with open(cache / f".{path.name}.lock", "w") if w.main else nullcontext() as lock:
        if lock is not None:
            fcntl.flock(lock, fcntl.LOCK_EX)
        if not distributed.broadcast(path.exists() if w.main else None):
            train_bundle(model, data, ck.pretrain, seed=ck.pretrain_seed, device=device, progress=progress,
                         stage="pretrain")
            if w.main:
                tmp = path.with_suffix(".tmp")
                torch.save({k: v.cpu() for k, v in model.state_dict().items()}, tmp)
                os.replace(tmp, path)
        else:
            _load_state(model, path)
        distributed.barrier()  # the others read the file only once rank 0 has written it
    digest = sha256_file(path)
    return BaseCheckpoint(model.eval(), path, digest, _base_metric(model, data, path, digest, device))


def _base_metric(model: nn.Module, data: DatasetBundle, path: Path, digest: str, device: str) -> float:
    """Top-1 of the base model on the test split, cached beside the checkpoint (keyed by its sha256)."""
    sidecar = path.with_name(path.name + ".metric.json")
    cached = distributed.broadcast(_cached_metric(sidecar, digest, data.name) if distributed.world().main else None)
    if cached is not None:
        return cached
    top1 = evaluate_top1(model, data.test, device=device)
    if distributed.world().main:
        try:
            atomic_write_text(sidecar, json.dumps({"sha256": digest, "dataset": data.name, "top1": top1}))
        except OSError:
            pass  # read-only checkpoint folder: recompute next time
    return top1


def _cached_metric(sidecar: Path, digest: str, dataset: str) -> Optional[float]:
    try:
        cached = json.loads(sidecar.read_text())
        if cached.get("sha256") == digest and cached.get("dataset") == dataset:
            return float(cached["top1"])
    except (OSError, ValueError, KeyError):
        pass
    return None
