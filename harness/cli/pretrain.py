"""``pretrain``: make a track's base checkpoint available (train and cache it, or verify a local file)."""

from __future__ import annotations

import enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from harness.cli.common import ProgressDisplay, friendly, out

app = typer.Typer()

Device = enum.Enum("Device", {d: d for d in ("cpu", "cuda")}, type=str)


@app.command()
@friendly
def pretrain(
    track: Annotated[Optional[str], typer.Argument(help="track id or track file")] = None,
    model: Annotated[Optional[str], typer.Option(help="a model without a registered track: its track is derived "
                                                      "from --dataset's default one (as evaluate does)")] = None,
    dataset: Annotated[Optional[str], typer.Option(help="dataset of --model")] = None,
    data_root: Annotated[Optional[Path], typer.Option(help="dataset root (CIFAR/ImageNet/COCO)",
                                                      envvar="PBENCH_DATA")] = None,
    cache_dir: Annotated[Optional[Path], typer.Option(help="base checkpoint cache (default ~/.cache/pbench)",
                                                      envvar="PBENCH_CACHE")] = None,
    device: Annotated[Device, typer.Option(help="cpu or cuda")] = Device.cpu,
    threads: Annotated[Optional[int], typer.Option(help="torch threads", min=1)] = None,
) -> None:
    """Train and cache a track's base checkpoint (or check its local file); print its path, sha256, pin line.

    ``--model`` with ``--dataset`` (or a track) pretrains a derived track's base, as ``evaluate`` derives it.
    The pin line is the track-file line (under ``checkpoint:``) that pins the trained base's sha256."""
    import torch

    from harness.tasks import task_for
    from harness.tracks import resolve_track

    from harness.protocol.distributed import require_device
    require_device(device.value)
    if threads:
        torch.set_num_threads(threads)
    cfg, note = resolve_track(track, model, dataset, data_root)
    if note:
        out.print(note, highlight=False, soft_wrap=True)
    from harness.protocol import distributed
    w = distributed.init(device.value)  # under torchrun: pretrain data parallel, rank 0 writes and reports
    task = task_for(cfg, data_root=data_root, cache_dir=cache_dir, device=distributed.local_device(device.value, w))
    with ProgressDisplay() as progress:
        base = task.base_model(progress)
    if not w.main:
        return
    out.print(f"{cfg.id}: {base.path}\nsha256 {base.sha256}\n{cfg.metric} {base.metric:.2f}", highlight=False,
              soft_wrap=True)
    if cfg.checkpoint.path is None and cfg.checkpoint.sha256 != base.sha256:
        out.print(f"to pin this base in a track file, under checkpoint:\n  sha256: {base.sha256}", highlight=False,
                  soft_wrap=True)
