"""Tiny fixtures in the official on-disk formats: CIFAR (python pickles, made-up pixels), ImageNet
(ImageFolder JPEGs, made-up pixels) and COCO 2017 (json + JPEGs of real photos).

The made-up images are learnable on purpose: every class has its own colour and
blob position, so a few epochs of a small CNN (or a nearest-centroid rule) beat
chance by a wide margin, and an end-to-end test can check that training helps.
"""

from __future__ import annotations

import json
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


# --------------------------------------------------------------------------- ImageFolder (ImageNet layout)


def write_tiny_imagefolder(
    root: str | Path,
    num_classes: int = 4,
    n_train: int = 48,
    n_val: int = 16,
    size: int = 40,
    seed: int = 0,
) -> Path:
    """Write a tiny dataset in ImageNet's ImageFolder layout under ``root``; return ``root``.

    ``root/train/<wnid>/<name>.JPEG`` and ``root/val/<wnid>/<name>.JPEG`` with made-up wnids
    (``n00000000``, ...), RGB JPEGs of ``size`` x ``size`` pixels holding the learnable blobs of the
    tiny CIFAR fixture (upsampled), balanced over classes.
    """
    from PIL import Image

    if not 1 <= num_classes <= 1000:
        raise ValueError("num_classes must be in 1..1000")
    root = Path(root)
    x_train, y_train, x_val, y_val = tiny_cifar_arrays(num_classes, n_train, n_val, seed)
    for split, xs, ys in (("train", x_train, y_train), ("val", x_val, y_val)):
        for c in range(num_classes):
            (root / split / f"n{c:08d}").mkdir(parents=True, exist_ok=True)
        for i, (x, y) in enumerate(zip(xs, ys)):
            img = Image.fromarray(x.transpose(1, 2, 0)).resize((size, size), Image.BILINEAR)
            img.save(root / split / f"n{int(y):08d}" / f"{split}_{i:06d}.JPEG", quality=95)
    return root


# --------------------------------------------------------------------------- COCO 2017 layout

#: COCO's 80 category ids (1..90 with gaps), in class-index order
COCO_CATEGORY_IDS = (
    1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 27, 28, 31, 32, 33, 34,
    35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 46, 47, 48, 49, 50, 51, 52, 53, 54, 55, 56, 57, 58, 59, 60, 61, 62, 63,
    64, 65, 67, 70, 72, 73, 74, 75, 76, 77, 78, 79, 80, 81, 82, 84, 85, 86, 87, 88, 89, 90,
)
PERSON, BUS, TIE = 1, 6, 32

#: The two photos that ship inside the Ultralytics package, with hand-checked boxes
#: (category id, x0, y0, x1, y1 in pixels of the original image).
ASSET_BOXES = {
    "bus.jpg": [(BUS, 17, 231, 802, 768), (PERSON, 48, 399, 245, 903), (PERSON, 670, 380, 810, 876),
                (PERSON, 221, 406, 345, 858), (PERSON, 0, 551, 63, 873)],
    "zidane.jpg": [(PERSON, 743, 48, 1141, 720), (PERSON, 123, 193, 711, 720), (TIE, 441, 437, 497, 710),
                   (TIE, 983, 313, 1024, 419)],
}


def ultralytics_assets() -> Path:
    """The ``assets`` folder of the installed Ultralytics package (found without importing it)."""
    import importlib.util

    spec = importlib.util.find_spec("ultralytics")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the ultralytics package is not installed")
    return Path(list(spec.submodule_search_locations)[0]) / "assets"


def coco_category_names() -> list[str]:
    """COCO's 80 class names, in class-index order (from Ultralytics' coco.yaml, read as a file)."""
    import yaml

    cfg = yaml.safe_load((ultralytics_assets().parent / "cfg" / "datasets" / "coco.yaml").read_text())
    return [cfg["names"][i] for i in range(len(COCO_CATEGORY_IDS))]


def write_tiny_coco(
    root: str | Path,
    n_train: int = 12,
    n_val: int = 6,
    size: int = 160,
    seed: int = 0,
) -> Path:
    """Write a tiny COCO 2017 dataset under ``root``; return ``root``.

    Real photos: random crops (at least 60% of each side), horizontal flips and rescales of the two
    images that ship inside Ultralytics (``bus.jpg``, ``zidane.jpg``), long side ``size`` pixels,
    with their boxes transformed along (boxes less than half visible are dropped). The layout and
    json are COCO's: ``annotations/instances_{train,val}2017.json`` (all 80 categories with their
    real ids), ``train2017/`` and ``val2017/`` holding ``<12-digit id>.jpg``; ids are unique across
    splits and the file stem is the image id, as in COCO.
    """
    from PIL import Image

    root = Path(root)
    rng = np.random.default_rng(seed)
    assets = ultralytics_assets()
    photos = {name: Image.open(assets / name).convert("RGB") for name in ASSET_BOXES}
    categories = [{"id": c, "name": n, "supercategory": "none"}
                  for c, n in zip(COCO_CATEGORY_IDS, coco_category_names())]
    next_id, next_ann = 1, 1
    for split, n in (("train2017", n_train), ("val2017", n_val)):
        (root / split).mkdir(parents=True, exist_ok=True)
        images, annotations = [], []
        for k in range(n):
            name = list(ASSET_BOXES)[k % len(ASSET_BOXES)]
            photo = photos[name]
            w0, h0 = photo.size
            cw, ch = int(w0 * rng.uniform(0.6, 1.0)), int(h0 * rng.uniform(0.6, 1.0))
            cx, cy = int(rng.integers(0, w0 - cw + 1)), int(rng.integers(0, h0 - ch + 1))
            flip = bool(rng.random() < 0.5)
            scale = size / max(cw, ch)
            w, h = max(1, round(cw * scale)), max(1, round(ch * scale))
            img = photo.crop((cx, cy, cx + cw, cy + ch)).resize((w, h), Image.BILINEAR)
            if flip:
                img = img.transpose(Image.FLIP_LEFT_RIGHT)
            image_id = next_id
            next_id += 1
            file_name = f"{image_id:012d}.jpg"
            img.save(root / split / file_name, quality=92)
            images.append({"id": image_id, "file_name": file_name, "width": w, "height": h})
            for cat, x0, y0, x1, y1 in ASSET_BOXES[name]:
                a0, b0 = max(x0, cx), max(y0, cy)
                a1, b1 = min(x1, cx + cw), min(y1, cy + ch)
                if a1 <= a0 or b1 <= b0 or (a1 - a0) * (b1 - b0) < 0.5 * (x1 - x0) * (y1 - y0):
                    continue
                bx0, bx1 = (a0 - cx) * scale, (a1 - cx) * scale
                if flip:
                    bx0, bx1 = w - bx1, w - bx0
                by0, by1 = (b0 - cy) * scale, (b1 - cy) * scale
                box = [round(bx0, 2), round(by0, 2), round(bx1 - bx0, 2), round(by1 - by0, 2)]
                annotations.append({"id": next_ann, "image_id": image_id, "category_id": cat, "bbox": box,
                                    "area": round(box[2] * box[3], 2), "iscrowd": 0, "segmentation": []})
                next_ann += 1
        (root / "annotations").mkdir(parents=True, exist_ok=True)
        doc = {"info": {"description": "PruningBench tiny COCO fixture"}, "licenses": [], "images": images,
               "annotations": annotations, "categories": categories}
        (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(doc))
    return root
