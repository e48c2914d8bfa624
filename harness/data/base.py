"""The dataset contract: a registry of loaders that each return a :class:`DatasetBundle`."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, TensorDataset

from harness.errors import HarnessError
from harness.registry import Registry
from specs.track import DatasetRef

__all__ = ["DATASETS", "DatasetBundle", "DatasetError", "Loader", "load_dataset", "load_track_dataset",
           "to_tensor_dataset"]


class DatasetError(HarnessError):
    """A dataset cannot be loaded. ``str()`` is one line naming what was expected and where."""


@dataclass(frozen=True)
class DatasetBundle:
    """A loaded dataset: both splits plus what a model factory needs to know.

    Items of ``train`` and ``test`` are ``(x, y)`` with ``x`` a float32 tensor of
    shape ``[in_chans, image_size, image_size]``, already normalized, and ``y`` an
    int class index in ``[0, num_classes)``. ``mean``/``std`` are the per-channel
    constants that were used for normalization (raw pixels in [0, 1]), so that
    augmentation that must act on raw pixels (e.g. zero-padding a random crop)
    can be reproduced exactly.
    """

    name: str
    num_classes: int
    in_chans: int
    image_size: int
    train: Dataset
    test: Dataset
    task: str = "classification"
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()

    def training_split(self, recipe) -> Dataset:
        """The train split as a training ``recipe`` (:class:`specs.track.Recipe`) uses it. In-memory
        datasets are augmented on the training device by the loop itself, so this is ``train``."""
        return self.train

    @property
    def crop_fill(self) -> Optional[tuple[float, ...]]:
        """The normalized value of a raw zero pixel per channel (what padding before normalization gives)."""
        return tuple(-m / s for m, s in zip(self.mean, self.std)) if self.mean else None


# A loader takes (data_root, image_size); both may be None (loader defaults apply).
Loader = Callable[[Optional[Path], Optional[int]], DatasetBundle]

DATASETS: Registry[Loader] = Registry("dataset", of=Callable)


def load_dataset(
    name: str, data_root: str | Path | None = None, image_size: int | None = None
) -> DatasetBundle:
    """Load a registered dataset. Raises ``UnknownName`` or :class:`DatasetError`."""
    loader = DATASETS.get(name)
    if image_size is not None and image_size < 1:
        raise DatasetError(f"{name}: image_size must be a positive integer, got {image_size}")
    root = Path(data_root).expanduser() if data_root is not None else None
    return loader(root, image_size)


def to_tensor_dataset(
    x: torch.Tensor,
    y: torch.Tensor,
    mean: Sequence[float],
    std: Sequence[float],
    image_size: int | None,
    chunk: int = 2048,
) -> TensorDataset:
    """Raw images [N, C, H, W] -> resized, normalized float32 ``TensorDataset``.

    ``x`` holds raw pixels, either uint8 in [0, 255] or float in [0, 1]; it is not
    modified. ``mean``/``std`` are per channel, in raw [0, 1] units. Resizing
    (bilinear, no antialias) is materialized in memory so the training loop keeps
    its TensorDataset fast path; work is chunked to bound the peak memory.
    """
    n, c, h, w = x.shape
    side = image_size if image_size is not None else h
    m = torch.tensor(mean, dtype=torch.float32).view(1, c, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, c, 1, 1)
    out = torch.empty((n, c, side, side), dtype=torch.float32)
    for start in range(0, n, chunk):
        part = x[start : start + chunk].to(torch.float32)
        if x.dtype == torch.uint8:
            part = part / 255.0
        if (side, side) != (h, w):
            part = F.interpolate(part, size=(side, side), mode="bilinear", align_corners=False)
        out[start : start + chunk] = (part - m) / s
    return TensorDataset(out, y.to(torch.int64))


def load_track_dataset(ref: DatasetRef, data_root: Optional[Path]) -> DatasetBundle:
    """The track's dataset; a track's ``mean``/``std`` go to loaders that take them (ImageNet)."""
    if ref.mean is None:
        return load_dataset(ref.name, data_root, ref.image_size)
    loader = DATASETS.get(ref.name)
    if "mean" not in inspect.signature(loader).parameters:
        raise HarnessError(f"dataset {ref.name} has a fixed normalization: drop mean/std from the track")
    root = Path(data_root).expanduser() if data_root is not None else None
    return loader(root, ref.image_size, mean=tuple(ref.mean), std=tuple(ref.std))
