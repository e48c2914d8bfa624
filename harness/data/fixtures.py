"""Tiny CIFAR-format fixtures: real files in the official on-disk format, made up pixels.

The images are learnable on purpose: every class has its own colour and blob
position, so a few epochs of a small CNN (or a nearest-centroid rule) beat
chance by a wide margin, and an end-to-end test can check that training helps.
"""

from __future__ import annotations

import pickle
import struct
from pathlib import Path
from typing import Literal

import numpy as np

from harness.data.cifar import LAYOUTS

CIFAR10_LABEL_NAMES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)


class _Py2StylePickler(pickle._Pickler):  # the pure-Python pickler can be customized
    """Writes bytes the way Python 2 wrote ``str`` and names numpy's array
    constructor as numpy 1 did, exactly like the official files.

    So readers behave as with the originals: ``encoding="bytes"`` yields bytes
    keys, ``encoding="latin1"`` (torchvision) yields str keys, and numpy 1 can
    read them too (numpy 2 would name ``numpy._core.multiarray``).
    """

    dispatch = pickle._Pickler.dispatch.copy()

    def save_py2_str(self, obj: bytes) -> None:
        n = len(obj)
        if n < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([n]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", n) + obj)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str

    def save_global(self, obj, name=None):
        if getattr(obj, "__name__", None) == "_reconstruct" and getattr(obj, "__module__", "").startswith(
            ("numpy.core", "numpy._core")
        ):
            self.write(pickle.GLOBAL + b"numpy.core.multiarray\n_reconstruct\n")
            self.memoize(obj)
            return
        super().save_global(obj, name)


def _dump(obj: object, path: Path) -> None:
    with path.open("wb") as f:
        _Py2StylePickler(f, protocol=2).dump(obj)


def tiny_cifar_arrays(
    num_classes: int, n_train: int, n_test: int, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Raw uint8 images [N, 3, 32, 32] and int64 labels for both splits."""
    rng = np.random.default_rng(seed)
    colour = rng.uniform(30, 225, size=(num_classes, 3))
    centre = rng.uniform(9, 23, size=(num_classes, 2))
    radius = rng.uniform(4, 8, size=num_classes)
    yy, xx = np.mgrid[0:32, 0:32].astype(np.float64)

    def make(n: int) -> tuple[np.ndarray, np.ndarray]:
        labels = rng.permutation(np.arange(n) % num_classes).astype(np.int64)  # balanced
        jitter = rng.normal(0, 1.5, size=(n, 2))
        c = centre[labels] + jitter
        d2 = (yy[None] - c[:, 0, None, None]) ** 2 + (xx[None] - c[:, 1, None, None]) ** 2
        mask = np.exp(-d2 / (2 * radius[labels, None, None] ** 2))[:, None]  # [n, 1, 32, 32]
        background = rng.uniform(60, 190, size=(n, 1, 1, 1))
        img = background * (1 - mask) + colour[labels][:, :, None, None] * mask
        img += rng.normal(0, 12, size=img.shape)
        return np.clip(np.rint(img), 0, 255).astype(np.uint8), labels

    x_train, y_train = make(n_train)
    x_test, y_test = make(n_test)
    return x_train, y_train, x_test, y_test


def write_tiny_cifar(
    root: str | Path,
    kind: Literal["cifar10", "cifar100"] = "cifar10",
    n_train: int = 1000,
    n_test: int = 200,
    seed: int = 0,
) -> Path:
    """Write a tiny CIFAR-10/100 under ``root/<official folder>``; return that folder.

    The files match the official python-pickle format: protocol 2 dicts with
    bytes keys, b'data' uint8 [N, 3072] (1024 R, 1024 G, 1024 B values, row-major
    32x32), labels as lists of ints, b'filenames', b'batch_label', and the meta
    file. CIFAR-10 splits the train set over data_batch_1..5 like the original.
    """
    if kind not in LAYOUTS:
        raise ValueError(f"kind must be one of {sorted(LAYOUTS)}, got {kind!r}")
    if n_train < 0 or n_test < 0:
        raise ValueError("n_train and n_test must be >= 0")
    layout = LAYOUTS[kind]
    folder = Path(root) / layout.folder
    folder.mkdir(parents=True, exist_ok=True)
    x_train, y_train, x_test, y_test = tiny_cifar_arrays(layout.num_classes, n_train, n_test, seed)

    def batch(x: np.ndarray, y: np.ndarray, label: str, offset: int) -> dict:
        d = {
            b"batch_label": label.encode(),
            b"data": np.ascontiguousarray(x.reshape(len(x), 3072)),
            b"filenames": [f"tiny_{offset + i:06d}.png".encode() for i in range(len(x))],
        }
        if kind == "cifar10":
            d[b"labels"] = [int(v) for v in y]
        else:  # CIFAR-100: 20 superclasses of 5 fine classes each (our grouping: fine // 5)
            d[b"fine_labels"] = [int(v) for v in y]
            d[b"coarse_labels"] = [int(v) // 5 for v in y]
        return d

    if kind == "cifar10":
        bounds = np.linspace(0, n_train, 6).round().astype(int)
        for i in range(5):
            lo, hi = bounds[i], bounds[i + 1]
            _dump(batch(x_train[lo:hi], y_train[lo:hi], f"training batch {i + 1} of 5", lo),
                  folder / f"data_batch_{i + 1}")
        _dump(batch(x_test, y_test, "testing batch 1 of 1", n_train), folder / "test_batch")
        _dump(
            {
                b"num_cases_per_batch": int(bounds[1] - bounds[0]),
                b"label_names": [n.encode() for n in CIFAR10_LABEL_NAMES],
                b"num_vis": 3072,
            },
            folder / "batches.meta",
        )
    else:
        _dump(batch(x_train, y_train, "training batch 1 of 1", 0), folder / "train")
        _dump(batch(x_test, y_test, "testing batch 1 of 1", n_train), folder / "test")
        _dump(
            {
                b"fine_label_names": [f"fine_{i:02d}".encode() for i in range(100)],
                b"coarse_label_names": [f"coarse_{i:02d}".encode() for i in range(20)],
            },
            folder / "meta",
        )
    return folder
