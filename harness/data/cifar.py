"""CIFAR-10 / CIFAR-100 from the official python-pickle layout (see datasets/README.md)."""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from harness.data.base import DATASETS, DatasetBundle, DatasetError, to_tensor_dataset

# The constants of Torch-Pruning's benchmarks (benchmarks/registry.py), on which
# PruningBench's CIFAR numbers are based; raw pixels in [0, 1].
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2023, 0.1994, 0.2010)
CIFAR100_MEAN = (0.5071, 0.4867, 0.4408)
CIFAR100_STD = (0.2675, 0.2565, 0.2761)


@dataclass(frozen=True)
class CifarLayout:
    name: str
    folder: str  # the folder the official tarball unpacks to
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    label_key: bytes
    num_classes: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


LAYOUTS = {
    "cifar10": CifarLayout(
        "cifar10", "cifar-10-batches-py",
        tuple(f"data_batch_{i}" for i in range(1, 6)), ("test_batch",),
        b"labels", 10, CIFAR10_MEAN, CIFAR10_STD,
    ),
    "cifar100": CifarLayout(
        "cifar100", "cifar-100-python", ("train",), ("test",),
        b"fine_labels", 100, CIFAR100_MEAN, CIFAR100_STD,
    ),
}


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles the official CIFAR files and nothing else: no arbitrary code runs.

    The files hold dicts of bytes, ints, lists and one numpy uint8 array. Python 3
    writers encode bytes through ``_codecs.encode``; numpy 2 writers name
    ``numpy._core`` where numpy 1 (and the official files) name ``numpy.core``.
    """

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name}")
        if module == "numpy.core.multiarray":
            module = "numpy._core.multiarray" if hasattr(np, "_core") else module
        return super().find_class(module, name)


def _expected(layout: CifarLayout, path: Path, why: str = "") -> str:
    return f"{layout.name}: {why}expected {path} (python-pickle layout, see datasets/README.md)"


def batches_dir(layout: CifarLayout, root: Path) -> Path:
    """``root/<folder>``, or ``root`` itself when it already is the batches folder."""
    first = layout.train_files[0]
    if (root / layout.folder / first).is_file():
        return root / layout.folder
    if (root / first).is_file():
        return root
    why = "" if root.is_dir() else f"data root {root} does not exist; "
    raise DatasetError(_expected(layout, root / layout.folder / first, why))


def _read_batch(layout: CifarLayout, path: Path) -> tuple[np.ndarray, np.ndarray]:
    if not path.is_file():
        raise DatasetError(_expected(layout, path))
    try:
        with path.open("rb") as f:
            d = _ArrayUnpickler(f, encoding="bytes").load()
        data = d[b"data"]
        labels = np.asarray(d[layout.label_key], dtype=np.int64)
    except (pickle.UnpicklingError, EOFError, KeyError, TypeError, ValueError, AttributeError) as e:
        raise DatasetError(
            f"{layout.name}: {path} is not a CIFAR python-pickle batch with keys b'data' and "
            f"{layout.label_key!r} ({type(e).__name__}: {e}); see datasets/README.md"
        ) from None
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2
            and data.shape[1] == 3072 and labels.shape == (data.shape[0],)):
        raise DatasetError(
            f"{layout.name}: {path} must hold b'data' uint8 [N, 3072] and N labels, "
            f"got {getattr(data, 'dtype', type(data).__name__)} {getattr(data, 'shape', '')} "
            f"and {labels.size} labels"
        )
    if labels.size and (labels.min() < 0 or labels.max() >= layout.num_classes):
        raise DatasetError(f"{layout.name}: {path} has labels outside [0, {layout.num_classes})")
    return data, labels


def read_split(layout: CifarLayout, root: Path, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Raw uint8 images [N, 3, 32, 32] and int64 labels [N] of one split."""
    folder = batches_dir(layout, root)
    parts = [_read_batch(layout, folder / f) for f in (layout.train_files if train else layout.test_files)]
    data = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    # Each row is 1024 red, then 1024 green, then 1024 blue values, row-major 32x32.
    return torch.from_numpy(data).view(-1, 3, 32, 32), torch.from_numpy(labels)


def load_cifar(kind: str, data_root: Path | None, image_size: int | None) -> DatasetBundle:
    layout = LAYOUTS[kind]
    if data_root is None:
        raise DatasetError(
            f"{kind}: no data root: give --data-root or set PBENCH_DATA; it must contain {layout.folder}/ (see datasets/README.md)"
        )

    def split(train: bool):
        x, y = read_split(layout, data_root, train)
        return to_tensor_dataset(x, y, layout.mean, layout.std, image_size)

    return DatasetBundle(
        name=kind,
        num_classes=layout.num_classes,
        in_chans=3,
        image_size=image_size or 32,
        train=split(True),
        test=split(False),
        mean=layout.mean,
        std=layout.std,
    )


@DATASETS.decorator
def cifar10(data_root: Path | None = None, image_size: int | None = None) -> DatasetBundle:
    """CIFAR-10: 50000 train / 10000 test 32x32 colour images, 10 classes."""
    return load_cifar("cifar10", data_root, image_size)


@DATASETS.decorator
def cifar100(data_root: Path | None = None, image_size: int | None = None) -> DatasetBundle:
    """CIFAR-100: 50000 train / 10000 test 32x32 colour images, 100 fine classes."""
    return load_cifar("cifar100", data_root, image_size)
