"""COCO 2017 detection from the official layout (see datasets/README.md)::

    DATA_ROOT/annotations/instances_train2017.json
    DATA_ROOT/annotations/instances_val2017.json
    DATA_ROOT/train2017/*.jpg        (or DATA_ROOT/images/train2017/, Ultralytics' layout)
    DATA_ROOT/val2017/*.jpg          (or DATA_ROOT/images/val2017/)

Classes are the json's categories sorted by id (COCO's 80 give the usual 0..79 order); a class
index maps back to its COCO ``category_id`` through :attr:`CocoBundle.category_ids`. Images are
read on the fly with OpenCV and letterboxed to ``image_size`` (aspect kept, gray padding, as
Ultralytics does); the val split is what the harness scores with pycocotools. The user's data
folder is only ever read: the YOLO-format labels Ultralytics' trainer needs are written by
:meth:`CocoBundle.yolo_data` into the harness cache.
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch.utils.data import Dataset

from harness.data.base import DatasetBundle, DatasetError

DEFAULT_SIZE = 640
SPLITS = {"train": "train2017", "val": "val2017"}
LAYOUT = ("COCO 2017 layout: annotations/instances_{train,val}2017.json and train2017/, val2017/ image "
          "folders, see datasets/README.md")
PAD_VALUE = 114  # Ultralytics' letterbox gray
#: bump when the label files written by yolo_data() change
CONVERTER_VERSION = 1


def letterbox_geometry(height: int, width: int, size: int) -> tuple[float, int, int, int, int]:
    """``(ratio, new_w, new_h, left, top)``: scale to fit ``size`` x ``size`` keeping the aspect, center."""
    r = min(size / height, size / width)
    new_w, new_h = round(width * r), round(height * r)
    left, top = round((size - new_w) / 2 - 0.1), round((size - new_h) / 2 - 0.1)
    return r, new_w, new_h, left, top


def read_letterboxed(path: Path, size: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """RGB float image ``[3, size, size]`` in [0, 1] and the original ``(height, width)``."""
    import cv2

    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise DatasetError(f"coco: cannot read image {path}")
    h, w = img.shape[:2]
    r, new_w, new_h, left, top = letterbox_geometry(h, w, size)
    if (new_w, new_h) != (w, h):
        img = cv2.resize(img, (new_w, new_h), interpolation=cv2.INTER_AREA if r < 1 else cv2.INTER_LINEAR)
    out = np.full((size, size, 3), PAD_VALUE, dtype=np.uint8)
    out[top:top + new_h, left:left + new_w] = img
    x = torch.from_numpy(np.ascontiguousarray(out[:, :, ::-1].transpose(2, 0, 1))).float() / 255.0
    return x, (h, w)


class CocoImages(Dataset):
    """One split. Item ``i``: ``(image [3, S, S] in [0, 1], boxes [n, 5])`` with rows ``(class, cx, cy, w, h)``
    normalized to the letterboxed image; crowd boxes are left out (COCO's evaluation ignores them)."""

    def __init__(self, annotations: Path, images: Path, size: int, category_ids: tuple[int, ...]):
        self.annotations, self.images, self.size = annotations, images, size
        self.category_ids = category_ids

    @functools.cached_property
    def _index(self) -> tuple[list[dict], dict[int, list[dict]]]:
        data = read_annotations(self.annotations)
        ids = {c["id"] for c in data["categories"]}
        if ids != set(self.category_ids):
            raise DatasetError(f"coco: {self.annotations} has other categories than the val json")
        images = sorted(data["images"], key=lambda im: im["id"])
        anns: dict[int, list[dict]] = {}
        for a in data["annotations"]:
            anns.setdefault(a["image_id"], []).append(a)
        return images, anns

    def __len__(self) -> int:
        return len(self._index[0])

    def info(self, i: int) -> dict:
        """The json's image record (``id``, ``file_name``, ``height``, ``width``)."""
        return self._index[0][i]

    def _clipped(self, i: int) -> tuple[dict, list[tuple[int, float, float, float, float]]]:
        """The image record and its non-crowd boxes as ``(class, x0, y0, x1, y1)`` in original pixels."""
        im = self.info(i)
        h, w = im["height"], im["width"]
        cls_of = {c: k for k, c in enumerate(self.category_ids)}
        rows = []
        for a in self._index[1].get(im["id"], []):
            x, y, bw, bh = a["bbox"]
            x0, y0, x1, y1 = max(0.0, x), max(0.0, y), min(float(w), x + bw), min(float(h), y + bh)
            if a["category_id"] not in cls_of:
                raise DatasetError(f"coco: {self.annotations}: annotation {a.get('id')} has unknown category "
                                   f"{a['category_id']}")
            if not a.get("iscrowd", 0) and x1 > x0 and y1 > y0:
                rows.append((cls_of[a["category_id"]], x0, y0, x1, y1))
        return im, rows

    def boxes(self, i: int) -> torch.Tensor:
        """``[n, 5]`` (class, cx, cy, w, h), normalized to the letterboxed ``size`` x ``size`` image."""
        im, rows = self._clipped(i)
        r, _, _, left, top = letterbox_geometry(im["height"], im["width"], self.size)
        s = self.size
        out = [[c, ((x0 + x1) / 2 * r + left) / s, ((y0 + y1) / 2 * r + top) / s, (x1 - x0) * r / s,
                (y1 - y0) * r / s] for c, x0, y0, x1, y1 in rows]
        return torch.tensor(out, dtype=torch.float32).reshape(-1, 5)

    def yolo_labels(self, i: int) -> str:
        """The image's YOLO label file: ``class cx cy w h`` per line, normalized to the original image."""
        im, rows = self._clipped(i)
        h, w = im["height"], im["width"]
        return "".join(f"{c} {(x0 + x1) / 2 / w:.6f} {(y0 + y1) / 2 / h:.6f} {(x1 - x0) / w:.6f} "
                       f"{(y1 - y0) / h:.6f}\n" for c, x0, y0, x1, y1 in rows)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        x, _ = read_letterboxed(self.images / self.info(i)["file_name"], self.size)
        return x, self.boxes(i)


def collate(items: list) -> tuple[torch.Tensor, torch.Tensor]:
    """Images ``[B, 3, S, S]`` and targets ``[B, M, 5]``, padded with rows of -1 (so a batch splits
    into single-sample batches by slicing, like a classification batch)."""
    x = torch.stack([it[0] for it in items])
    m = max((len(it[1]) for it in items), default=0)
    y = torch.full((len(items), max(m, 1), 5), -1.0)
    for k, it in enumerate(items):
        y[k, :len(it[1])] = it[1]
    return x, y


def read_annotations(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise DatasetError(f"coco: {path} is not a readable COCO json ({type(e).__name__})") from None
    if not isinstance(data, dict) or not all(isinstance(data.get(k), list)
                                             for k in ("images", "annotations", "categories")):
        raise DatasetError(f"coco: {path} must hold 'images', 'annotations' and 'categories' lists ({LAYOUT})")
    return data


@dataclass(frozen=True)
class CocoBundle(DatasetBundle):
    """COCO as the harness sees it: both splits (:class:`CocoImages`), the class <-> category map,
    and the files the scorer and the trainer need."""

    root: Optional[Path] = None
    annotations: dict = field(default_factory=dict)  # split -> instances json
    image_dirs: dict = field(default_factory=dict)   # split -> image folder
    category_ids: tuple[int, ...] = ()
    names: tuple[str, ...] = ()

    def yolo_data(self, cache_dir: Path) -> Path:
        """Ultralytics' view of the train split, built once into ``cache_dir/coco/<key>``: ``images/train2017``
        (links to the user's images), ``labels/train2017/*.txt`` and a ``data.yaml``. Returns the yaml."""
        ann, images = self.annotations["train"], self.image_dirs["train"]
        st = ann.stat()
        ident = [str(ann.resolve()), st.st_size, st.st_mtime_ns, str(images.resolve()), CONVERTER_VERSION]
        key = hashlib.sha256(json.dumps(ident).encode()).hexdigest()[:16]
        out = Path(cache_dir) / "coco" / key
        out.parent.mkdir(parents=True, exist_ok=True)
        yaml_path = out / "data.yaml"
        with open(out.parent / f".{key}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # concurrent runs convert once
            if not yaml_path.is_file():
                shutil.rmtree(out, ignore_errors=True)  # an interrupted conversion
                self._write_yolo(out)
                tmp = yaml_path.with_suffix(".tmp")
                tmp.write_text(self._yaml(out))
                os.replace(tmp, yaml_path)  # written last: marks the conversion complete
        return yaml_path

    def _write_yolo(self, out: Path) -> None:
        # Ultralytics derives a label path from an image path by replacing its last "/images/" with
        # "/labels/", and resolves the image *folder* of data.yaml: so the folder is a real one in the
        # cache, holding one link per image of the json (the images themselves are never copied).
        split = SPLITS["train"]
        images, labels = out / "images" / split, out / "labels" / split
        images.mkdir(parents=True)
        labels.mkdir(parents=True)
        source = self.image_dirs["train"].resolve()
        ds = CocoImages(self.annotations["train"], self.image_dirs["train"], self.image_size, self.category_ids)
        for i in range(len(ds)):
            name = Path(ds.info(i)["file_name"])
            if not (source / name).is_file():
                raise DatasetError(f"coco: {source / name} is listed in {self.annotations['train']} but missing")
            (images / name.name).symlink_to(source / name)
            (labels / name.with_suffix(".txt").name).write_text(ds.yolo_labels(i))

    def _yaml(self, out: Path) -> str:
        import yaml

        images = str(out / "images" / SPLITS["train"])
        # val is never run (the harness scores with pycocotools); Ultralytics only needs it to exist
        return yaml.safe_dump({"path": str(out), "train": images, "val": images,
                               "names": dict(enumerate(self.names))}, sort_keys=False)


def _image_dir(root: Path, split: str) -> Path:
    for path in (root / SPLITS[split], root / "images" / SPLITS[split]):
        if path.is_dir():
            return path
    raise DatasetError(f"coco: expected the image folder {root / SPLITS[split]} ({LAYOUT})")


def coco(data_root: Optional[Path] = None, image_size: Optional[int] = None) -> CocoBundle:
    """COCO 2017 detection (or any dataset in its layout): train/val images and instances json."""
    if data_root is None:
        raise DatasetError(f"coco: no data root: give --data-root or set PBENCH_DATA ({LAYOUT})")
    if not data_root.is_dir():
        raise DatasetError(f"coco: data root {data_root} does not exist ({LAYOUT})")
    ann = {s: data_root / "annotations" / f"instances_{SPLITS[s]}.json" for s in SPLITS}
    for path in ann.values():
        if not path.is_file():
            raise DatasetError(f"coco: expected {path} ({LAYOUT})")
    dirs = {s: _image_dir(data_root, s) for s in SPLITS}
    cats = sorted(read_annotations(ann["val"])["categories"], key=lambda c: c["id"])
    if not cats:
        raise DatasetError(f"coco: {ann['val']} lists no categories")
    ids, names = tuple(int(c["id"]) for c in cats), tuple(str(c.get("name", c["id"])) for c in cats)
    size = image_size or DEFAULT_SIZE
    return CocoBundle(
        name="coco", num_classes=len(ids), in_chans=3, image_size=size, task="detection",
        train=CocoImages(ann["train"], dirs["train"], size, ids), test=CocoImages(ann["val"], dirs["val"], size, ids),
        root=data_root, annotations=ann, image_dirs=dirs, category_ids=ids, names=names)
