"""One run over N processes (torchrun / torch.distributed), and the same code in one process.

Launch: ``torchrun --nproc_per_node=N $(which pbench-harness) evaluate ...`` (timm's and
torchvision's convention), or let the harness launch it (:func:`launch`: Slurm jobs with
``gpus_per_job: N``). torchrun's environment (``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``,
``MASTER_ADDR``/``MASTER_PORT``) starts the process group (:func:`init`): NCCL for CUDA, gloo on CPU.

What runs where:

- training (pretrain, sparsify, retrain) and evaluation are data parallel on every rank
  (:func:`ddp`, each rank a 1/N share of every global batch; evaluation shards the test split and
  sums the counts, :func:`all_sum`);
- grouping, observations, the method conversation and the pruning plan run on rank 0 alone
  (:func:`on_main`), which sends the pruned model to the others;
- a regularizer is asked once per step, by rank 0, and its answer broadcast (:func:`shared`);
- only rank 0 writes checkpoints, models and the record.

Every decision that leads to collective calls is taken on rank 0 and broadcast, so ranks never
diverge into different collectives. A failure on rank 0 inside :func:`on_main` reaches every rank as
the same exception. A rank that dies ends the others: its peers' collectives fail (gloo) or torchrun
stops them (SIGTERM, turned into :class:`WorkerStopped`), and rank 0 records the run as failed.
"""

from __future__ import annotations

import atexit
import datetime as dt
import os
import pickle
import shutil
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, TypeVar

import torch
import torch.distributed as tdist
import torch.nn as nn

from harness.errors import HarnessError

T = TypeVar("T")

#: seconds a collective may wait for a peer before the run fails (a peer stuck outside the harness)
DEFAULT_TIMEOUT_S = float(os.environ.get("PBENCH_DIST_TIMEOUT", 1800))


class WorkerStopped(Exception):
    """This process was told to stop (SIGTERM from torchrun after another rank failed, or a cancel)."""


@dataclass(frozen=True)
class World:
    """This process's place in the run. ``World()`` is the single-process run."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    backend: Optional[str] = None

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def world() -> World:
    """The current process group (``World()`` when none is initialized)."""
    if not (tdist.is_available() and tdist.is_initialized()):
        return World()
    return World(rank=tdist.get_rank(), size=tdist.get_world_size(),
                 local_rank=int(os.environ.get("LOCAL_RANK", tdist.get_rank())), backend=tdist.get_backend())


def launched() -> bool:
    """True in a process that torchrun (or :func:`launch`) started as one of several."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init(device: str = "cpu") -> World:
    """Join the process group torchrun describes (idempotent); ``World()`` outside torchrun.

    ``device="cuda"`` uses NCCL and pins this process to GPU ``LOCAL_RANK``; otherwise gloo.
    """
    if not launched() or not tdist.is_available():
        return World()
    if not tdist.is_initialized():
        cuda = device.startswith("cuda")
        if cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        tdist.init_process_group("nccl" if cuda else "gloo", timeout=dt.timedelta(seconds=DEFAULT_TIMEOUT_S))
        signal.signal(signal.SIGTERM, _stop)
        atexit.register(lambda: tdist.is_initialized() and tdist.destroy_process_group())
    return world()


def _stop(signum, frame) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM ends the process
    raise WorkerStopped("stopped by the launcher (another process of this run failed, or the run was cancelled)")


def shield() -> None:
    """Ignore further SIGTERMs: this process is recording a failure (torchrun kills it after its grace
    period anyway)."""
    if world().distributed:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)


def require_device(device: str) -> None:
    """Bad input (:class:`HarnessError`) when ``device`` is ``cuda`` and this machine has no CUDA device."""
    if device == "cuda" and not torch.cuda.is_available():
        raise HarnessError("--device cuda: no CUDA device is available here (use --device cpu)")


def local_device(device: str, w: Optional[World] = None) -> str:
    """``cuda`` -> ``cuda:<local rank>`` in a distributed run; other devices unchanged."""
    w = w or world()
    return f"cuda:{w.local_rank}" if w.distributed and device == "cuda" else device


def _object_device() -> Optional[torch.device]:
    # NCCL moves pickled objects through the GPU; gloo through the CPU
    return torch.device("cuda", torch.cuda.current_device()) if world().backend == "nccl" else None


def broadcast(obj: Any = None, src: int = 0) -> Any:
    """``obj`` from rank ``src`` on every rank (pickled); returns it unchanged in a single process."""
    if not world().distributed:
        return obj
    box = [obj]
    tdist.broadcast_object_list(box, src=src, device=_object_device())
    return box[0]


def _portable(e: BaseException) -> BaseException:
    """``e`` if it survives pickling (our errors do), else a RuntimeError with its message."""
    try:
        pickle.loads(pickle.dumps(e))
        return e
    except Exception:
        return RuntimeError(f"{type(e).__name__}: {e}")


def on_main(fn: Callable[[], T], to_others: Callable[[T], Any] = lambda v: v,
            from_main: Callable[[Any], T] = lambda v: v) -> T:
    """Run ``fn`` on rank 0 only and give every rank its result, or raise its exception on every rank.

    ``to_others`` shapes what is sent (e.g. a model moved to the CPU); ``from_main`` unpacks it on
    the other ranks. In a single process this is ``fn()``.
    """
    w = world()
    if not w.distributed:
        return fn()
    if w.main:
        try:
            value = fn()
        except Exception as e:
            broadcast(("error", _portable(e)))
            e.everywhere = True
            raise
        broadcast(("ok", to_others(value)))
        return value
    status, payload = broadcast()
    if status == "error":
        payload.everywhere = True
        raise payload
    return from_main(payload)


def everywhere(e: BaseException) -> bool:
    """True if every rank raised ``e`` (it came through :func:`on_main`), so that the ranks are still in
    step; False for a failure of this process alone (its peers are somewhere else)."""
    return bool(getattr(e, "everywhere", False)) or not world().distributed


def note_failure(folder: Path, message: str) -> None:
    """Leave this rank's one-line failure reason in ``folder`` for rank 0, which records the run."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"rank{world().rank}").write_text(message[:1000])
    except OSError:
        pass


def noted_failures(folder: Path, wait_s: float = 2.0) -> list[str]:
    """The reasons other ranks left in ``folder`` (waiting up to ``wait_s`` for one), and removes it."""
    deadline = time.monotonic() + wait_s
    notes: list[str] = []
    while True:
        try:
            notes = [f"rank {p.name[4:]}: {p.read_text().strip()}" for p in sorted(folder.glob("rank*"))]
        except OSError:
            notes = []
        if notes or time.monotonic() >= deadline:
            break
        time.sleep(0.1)
    shutil.rmtree(folder, ignore_errors=True)
    return notes


def shared(fn: Callable[..., T]) -> Callable[..., T]:
    """``fn`` (e.g. a regularizer link) called on rank 0 only; every rank gets its result or its error.
    ``fn`` may be ``None`` on the other ranks."""
    if not world().distributed:
        return fn

    def call(*args, **kwargs):
        return on_main(lambda: fn(*args, **kwargs))

    return call


def all_sum(values: list[float], device: str = "cpu") -> list[float]:
    """Element-wise sum of ``values`` over all ranks (float64)."""
    w = world()
    if not w.distributed:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device if w.backend == "nccl" else "cpu")
    tdist.all_reduce(t)
    return t.tolist()


def sync_module(model: nn.Module) -> None:
    """Every rank takes rank 0's parameters and buffers (e.g. batch-norm statistics after training,
    which each rank updated from its own share of the batch)."""
    if not world().distributed:
        return
    with torch.no_grad():
        for t in list(model.parameters()) + list(model.buffers()):
            tdist.broadcast(t.data, src=0)


def barrier() -> None:
    if world().distributed:
        tdist.barrier()


def ddp(model: nn.Module, device: str) -> nn.Module:
    """``model`` wrapped for data-parallel training (itself in a single process)."""
    if not world().distributed:
        return model
    from torch.nn.parallel import DistributedDataParallel
    ids = [torch.device(device).index] if device.startswith("cuda") else None
    return DistributedDataParallel(model, device_ids=ids)


def shard(n: int, w: Optional[World] = None) -> range:
    """This rank's indices of ``range(n)`` for evaluation: every n-th, none repeated or dropped."""
    w = w or world()
    return range(w.rank, n, w.size)


def launch(fn: Callable[..., T], args: tuple, nproc: int, run_id: str = "pbench",
           monitor_interval_s: float = 0.5) -> dict[int, T]:
    """Run ``fn(*args)`` in ``nproc`` processes on this node with torchrun's machinery
    (``torch.distributed.launcher.elastic_launch``: the same environment, rendezvous, and the
    same end for every process when one fails). Returns ``{rank: return value}``; raises
    ``torch.distributed.elastic.multiprocessing.errors.ChildFailedError`` when a process fails."""
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=nproc, run_id=run_id, rdzv_backend="c10d",
                          rdzv_endpoint="localhost:0", max_restarts=0, monitor_interval=monitor_interval_s,
                          start_method="spawn")
    return elastic_launch(config, fn)(*args)
