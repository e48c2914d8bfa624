"""Datasets: a registry of loaders, each returning a :class:`DatasetBundle`.

``load_dataset("digits")`` works offline out of the box; ``cifar10`` and
``cifar100`` read the official python-pickle layout under ``data_root``, ``imagenet``
the ImageFolder layout and ``coco`` the COCO 2017 layout (see datasets/README.md); the
last two register lazily (torchvision / OpenCV are imported when they load). A new
loader is a function ``(data_root, image_size) -> DatasetBundle`` decorated with
``@DATASETS.decorator`` (or registered as ``"module:attr"``); tests/test_data.py then
covers it.
"""

from harness.data.base import DATASETS, DatasetBundle, DatasetError, load_dataset, load_track_dataset

# Imported for their registrations.
from harness.data import cifar as _cifar  # noqa: E402,F401
from harness.data import digits as _digits  # noqa: E402,F401

DATASETS.register("imagenet", "harness.data.imagenet:imagenet")
DATASETS.register("coco", "harness.data.coco:coco")

__all__ = ["DATASETS", "DatasetBundle", "DatasetError", "load_dataset", "load_track_dataset"]
