"""Base checkpoints: a local file with a known sha256, or trained by the harness
with the track's pretrain recipe and cached by the hash of everything that
determines it (model, dataset, recipe, seed).

**Reproducible bases.** CPU training is bitwise deterministic for a given numeric environment, but
that environment differs between machines and callers: PyTorch and oneDNN pick kernels by the CPU's
instruction set (AVX-512 vs AVX2 round differently), and reductions are split by the number of torch
threads (``--jobs 2`` gives each worker one thread). The committed digits records' base ``a3d9a9fe…``
was trained on an AVX-512 machine with 2 threads; a fresh AVX2 machine trains ``2905edf4…`` (reproduced
here with ``ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2``), and 1 thread gives yet another digest.
A file's digest also depended on its *name*: ``torch.save(obj, path)`` names the zip archive inside after the
file, so the same weights saved under another cache key had another sha256; :func:`write_state` serializes
through a buffer (archive name ``archive``), so the digest depends on the weights alone.
So CPU pretraining runs in a child process with one canonical environment (:data:`CANONICAL_CPU_ENV`:
AVX2 kernels for ATen, oneDNN and MKL, :data:`PRETRAIN_THREADS` threads), whatever the caller's thread
count, ``--jobs`` or CPU (any x86-64 CPU with AVX2 trains the same bits). GPU pretraining runs in
process and is not bitwise portable; a track can pin the digest it expects (``checkpoint.sha256``, also
for pretrain tracks): a cached or freshly trained file that differs raises :class:`BaseMismatch`, one
line naming both digests (the protocol records it as the run's failure).

**The digest before the run.** The base checkpoint's sha256 is part of every run key, so it must be
known before a run starts (sweeps skip recorded runs, Slurm jobs are keyed by the driver):
:func:`base_sha256` gives it without loading a model — the published file's digest, the cached file's,
else the track's pin, else (``train=True``) by training the base once.
"""

from __future__ import annotations

import collections
import fcntl
import hashlib
import io
import json
import os
import subprocess
import sys
import tempfile
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
import torch.nn as nn

from harness.data import DatasetBundle
from harness.errors import HarnessError
from harness.models import build_model as build
from harness.files import atomic_write_text, sha256_file
from harness.protocol import distributed
from harness.protocol.train import Progress, evaluate_top1, train_bundle
from specs.base import canonical
from specs.track import Checkpoint, TrackConfig

#: bump when the training loop changes in a way that changes trained weights
TRAINER_VERSION = 3  # 2: initial weights seeded by pretrain_seed alone; 3: canonical CPU environment
#: in-memory random crops pad with the raw zero pixel (torchvision's RandomCrop(padding)) since this version;
#: part of the key of recipes that crop only, so that checkpoints trained without crops keep their key
CROP_VERSION = 2
#: torch/OpenMP/MKL threads of CPU pretraining (fixed: results depend on how reductions are split; one thread
#: also avoids OpenMP barrier stalls on a busy machine)
PRETRAIN_THREADS = 1
#: the numeric environment of CPU pretraining (read by the libraries at start-up, hence a child process)
CANONICAL_CPU_ENV = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_CBWR": "AVX2",
                     "OMP_NUM_THREADS": str(PRETRAIN_THREADS), "MKL_NUM_THREADS": str(PRETRAIN_THREADS)}


class BaseMismatch(HarnessError):
    """The base checkpoint file is not the one the track (or the run key) expects."""


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


def initial_model(track: TrackConfig, data: DatasetBundle) -> nn.Module:
    """The untrained base model: its initial weights depend on ``pretrain_seed`` only, never on whatever
    the caller's generator state happens to be."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(track.checkpoint.pretrain_seed)
        return build_model(track, data)


def pretrain_key(track: TrackConfig) -> str:
    ident = {"model": canonical(track.model), "dataset": canonical(track.dataset),
             "recipe": canonical(track.checkpoint.pretrain), "seed": track.checkpoint.pretrain_seed,
             "trainer": TRAINER_VERSION}
    if track.checkpoint.pretrain.augmentation != "none":
        ident["crop"] = CROP_VERSION
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()


def cache_path(track: TrackConfig, cache_dir: Optional[Path] = None) -> Path:
    """Where a classification track's trained base checkpoint is cached."""
    cache = Path(cache_dir or default_cache_dir()) / "checkpoints"
    return cache / f"{track.model.slug()}-{track.dataset.name}-{pretrain_key(track)[:16]}.pt"


_DIGESTS: dict[tuple, str] = {}


def file_sha256(path: Path) -> str:
    """sha256 of a file, remembered while its size and modification time stay the same."""
    st = os.stat(path)
    key = (str(Path(path).resolve()), st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)
    if key not in _DIGESTS:
        _DIGESTS[key] = sha256_file(path)
    return _DIGESTS[key]


def state_of(model: nn.Module) -> dict:
    """``model``'s state dict on the CPU, with the state-dict versions that loading needs.

    ``load_state_dict`` hands each module its version (``_metadata``), and some modules refuse to load
    without it (torchvision's MNASNet: "cannot load as a MNASNet state dict"). torch.nn's own layers load
    any version, so only the versions of other classes that declare one (``_version`` other than 1) are
    kept: a model made of torch.nn layers and unversioned blocks is saved as a plain dict, byte for byte as
    before (the digests of existing bases hold)."""
    state = model.state_dict()
    tensors = {k: v.detach().cpu() for k, v in state.items()}
    versions = {name: {"version": m._version} for name, m in model.named_modules()
                if getattr(m, "_version", 1) != 1 and not type(m).__module__.startswith("torch.nn.")}
    if not versions:
        return tensors
    out = collections.OrderedDict(tensors)
    out._metadata = {k: dict(v) for k, v in state._metadata.items() if k in versions}
    return out


def write_state(model: nn.Module, path: Path) -> None:
    """Save :func:`state_of` ``model`` so that the file's bytes depend on the weights (and versions) only."""
    buf = io.BytesIO()
    torch.save(state_of(model), buf)
    Path(path).write_bytes(buf.getvalue())


def check_pin(track: TrackConfig, path: Path, digest: str) -> None:
    """A trained (cached) base must be the one the track pins, if it pins one."""
    pin = track.checkpoint.sha256
    if pin and digest != pin:
        raise BaseMismatch(f"base checkpoint {path} has sha256 {digest}, but track {track.id} pins {pin} (trained "
                           f"on another kind of machine or by other code: delete the file to retrain it here, or "
                           f"update the pin)")


def load_state(model: nn.Module, path: Path) -> None:
    """Load the state dict file ``path`` into ``model`` strictly (every name and shape must match): a
    ``.safetensors`` file (data only), else a ``torch.save``d dict of tensors read with ``weights_only``."""
    try:
        if Path(path).suffix == ".safetensors":
            from safetensors.torch import load_file
            state = load_file(str(path), device="cpu")
        else:
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
    digest = file_sha256(path)
    if ck.sha256 and digest != ck.sha256:
        raise HarnessError(f"{path}: sha256 {digest} does not match the track's {ck.sha256}")
    return path, digest


def known_base_sha256(track: TrackConfig, cache_dir: Optional[Path] = None, verify: bool = False) -> Optional[str]:
    """The sha256 of the base checkpoint runs of ``track`` start from, when it is known without training:
    the published file's (checked against the track's), the cached trained file's (checked against the
    track's pin), else the pin (unless ``verify``); ``None`` otherwise. Raises :class:`BaseMismatch` when a
    file differs from the pin. (:func:`harness.tasks.base_sha256` trains a missing base.)"""
    ck = track.checkpoint
    if ck.path is not None:
        return verified_file(ck)[1]
    path = cache_path(track, cache_dir)
    if path.is_file():
        digest = file_sha256(path)
        check_pin(track, path, digest)
        return digest
    if ck.sha256 and not verify:
        return ck.sha256
    return None


def _pretrain_in_child(track: TrackConfig, data_root: Optional[Path], out: Path,
                       progress: Optional[Progress]) -> None:
    """Train the base on the CPU in a fresh process under :data:`CANONICAL_CPU_ENV`; its state dict goes
    to ``out``. Progress lines from the child are passed on to ``progress``."""
    import harness
    root = str(Path(harness.__file__).resolve().parents[1])  # the child imports this very harness
    env = {**os.environ, **CANONICAL_CPU_ENV,
           "PYTHONPATH": os.pathsep.join([root, *filter(None, [os.environ.get("PYTHONPATH")])])}
    with tempfile.TemporaryDirectory(prefix="pbench-pretrain-") as tmp:
        spec = Path(tmp) / "track.json"
        spec.write_text(track.model_dump_json())
        cmd = [sys.executable, "-m", "harness.protocol.checkpoints", str(spec), str(out)]
        if data_root is not None:
            cmd += ["--data-root", str(data_root)]
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for line in proc.stdout:
            if line.startswith("progress ") and progress:
                done, total, info = line.split(" ", 3)[1:]
                progress("pretrain", int(done), int(total), **json.loads(info))
        err = proc.stderr.read()
        if proc.wait() != 0:
            last = err.strip().splitlines()[-1] if err.strip() else f"exit code {proc.returncode}"
            raise HarnessError(f"pretraining the base of track {track.id} failed: {last}")


def _train_base(track: TrackConfig, data: DatasetBundle, model: nn.Module, data_root: Optional[Path], path: Path,
                device: str, progress: Optional[Progress]) -> None:
    """Train the missing base: on one CPU process in the canonical child (bitwise portable), else here
    (a GPU, or every rank of a torchrun run, data parallel); rank 0 writes ``path``."""
    tmp = path.with_suffix(".tmp")
    ck, w = track.checkpoint, distributed.world()
    if device == "cpu" and not w.distributed:
        _pretrain_in_child(track, data_root, tmp, progress)
        load_state(model, tmp)
    else:
        train_bundle(model, data, ck.pretrain, seed=ck.pretrain_seed, device=device, progress=progress,
                     stage="pretrain")
        if not w.main:
            return
        write_state(model, tmp)
    os.replace(tmp, path)


def load_base(track: TrackConfig, data: DatasetBundle, cache_dir: Optional[Path] = None, device: str = "cpu",
              progress: Optional[Progress] = None, data_root: Optional[Path] = None) -> BaseCheckpoint:
    ck = track.checkpoint
    model = initial_model(track, data)
    if ck.path is not None:
        path, digest = verified_file(ck)
        load_state(model, path)
        metric = check_learned(track, data.num_classes, _base_metric(model, data, path, digest, device), path)
        return BaseCheckpoint(model.eval(), path, digest, metric)

    path = cache_path(track, cache_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    w = distributed.world()
    # concurrent runs train a missing checkpoint once; in a distributed run rank 0 holds the lock and
    # decides, and every rank trains (data parallel)
    with open(path.parent / f".{path.name}.lock", "w") if w.main else nullcontext() as lock:
        if lock is not None:
            fcntl.flock(lock, fcntl.LOCK_EX)
        if not distributed.broadcast(path.exists() if w.main else None):
            _train_base(track, data, model, data_root, path, device, progress)
        distributed.barrier()  # the others read the file only once rank 0 has written it
        digest = file_sha256(path)
        check_pin(track, path, digest)
        load_state(model, path)
    metric = check_learned(track, data.num_classes, _base_metric(model, data, path, digest, device), path)
    return BaseCheckpoint(model.eval(), path, digest, metric)


class FailedBase(HarnessError):
    """The base checkpoint did not learn: its top-1 does not beat chance by the track's margin."""


def check_learned(track: TrackConfig, num_classes: int, top1: float, path: Path) -> float:
    """``top1`` when the base beats chance (``100 / num_classes`` %) by ``checkpoint.chance_margin`` points;
    else :class:`FailedBase` in one line (a base that never learned makes no leaderboard entry)."""
    chance, margin = 100.0 / num_classes, track.checkpoint.chance_margin
    if track.metric == "top1" and margin is not None and top1 < chance + margin:
        raise FailedBase(f"failed base: {path.name} of track {track.id} reaches top-1 {top1:.2f}, which does not "
                         f"beat chance ({chance:.2f}) by the track's checkpoint.chance_margin ({margin:g} points); "
                         f"no run is recorded on it - "
                         + ("publish a base that learned (checkpoint.path), or pick another model"
                            if track.checkpoint.pretrain is None else
                            "train longer (checkpoint.pretrain), at another input size (dataset.image_size), or "
                            "pick another model"))
    return top1


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


def _child_main(argv: list[str]) -> None:
    """``python -m harness.protocol.checkpoints TRACK.json OUT.pt [--data-root DIR]``: CPU pretraining in
    the canonical environment (started by :func:`_pretrain_in_child`, which sets it)."""
    import argparse

    from harness.data import load_track_dataset
    parser = argparse.ArgumentParser()
    parser.add_argument("track", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--data-root", type=Path, default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(PRETRAIN_THREADS)
    track = TrackConfig.model_validate_json(args.track.read_text())
    data = load_track_dataset(track.dataset, args.data_root)
    model = initial_model(track, data)

    def progress(stage: str, done: int, total: int, **info) -> None:
        print(f"progress {done} {total} {json.dumps(info)}", flush=True)

    ck = track.checkpoint
    train_bundle(model, data, ck.pretrain, seed=ck.pretrain_seed, device="cpu", progress=progress, stage="pretrain")
    write_state(model, args.out)


if __name__ == "__main__":
    _child_main(sys.argv[1:])
