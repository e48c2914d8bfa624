"""ImageNet (ILSVRC-2012) from the standard ImageFolder layout (see datasets/README.md)::

    DATA_ROOT/train/<wnid>/*.JPEG    1,281,167 images in 1000 class folders
    DATA_ROOT/val/<wnid>/*.JPEG      50,000 images, sorted into the same class folders

Classes are the sorted names of the ``train/`` folders (torchvision's ``ImageFolder``), so any
dataset in this layout works (e.g. a subset, or the tiny fixture of the tests). Images are decoded
on the fly (never held in memory). Preprocessing is torchvision's reference recipe, which produced
the published checkpoints PruningBench starts from: train = ``RandomResizedCrop(S)`` + horizontal
flip; test = resize the short side to ``S / 0.875`` (256 for 224) + ``CenterCrop(S)``; bilinear;
ImageNet mean/std unless the track gives its own (timm's ViT checkpoints use 0.5/0.5).
``train_eval`` is the train split under the test transform: the calibration images.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from torch.utils.data import Dataset

from harness.data.base import DatasetBundle, DatasetError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_SIZE = 224
CROP_FRACTION = 0.875  # 224 / 256
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
LAYOUT = "ImageFolder layout: train/<class>/<image> and val/<class>/<image>, see datasets/README.md"


@dataclass(frozen=True)
class ImageFolderBundle(DatasetBundle):
    """A :class:`DatasetBundle` whose splits are decoded from image files on the fly."""

    train_eval: Optional[Dataset] = None  # train images, test transform (calibration)
    classes: tuple[str, ...] = ()
    model_variant: str = "imagenet"  # the architecture family a model name should take on this data

    def training_split(self, recipe) -> Dataset:
        """``train``, or, for a recipe with RandAugment or random erasing, the same images under timm's
        training transform with them (:func:`train_transform`)."""
        if not (recipe.auto_augment or recipe.random_erase):
            return self.train
        from torch.utils.data import Subset
        subset = isinstance(self.train, Subset)  # (a bundle limited to some images, e.g. for a cost estimate)
        ds = copy.copy(self.train.dataset if subset else self.train)  # the same file list: no rescan
        ds.transform = train_transform(self.image_size, self.mean, self.std, recipe)
        return Subset(ds, self.train.indices) if subset else ds


def _split_dir(root: Path, split: str) -> Path:
    path = root / split
    if not path.is_dir():
        raise DatasetError(f"imagenet: expected {path}/<class>/<image> ({LAYOUT})")
    classes = [d for d in path.iterdir() if d.is_dir()]
    if not classes:
        loose = any(f.suffix.lower() in IMAGE_SUFFIXES for f in path.iterdir())
        hint = "; sort the images into class folders first" if loose else ""
        raise DatasetError(f"imagenet: {path} has no class folders{hint} ({LAYOUT})")
    return path


def transforms(image_size: int, mean: tuple[float, ...], std: tuple[float, ...]):
    """(train, test) torchvision transforms."""
    from torchvision import transforms as T

    bilinear = T.InterpolationMode.BILINEAR
    norm = [T.ToTensor(), T.Normalize(mean, std)]
    train = T.Compose([T.RandomResizedCrop(image_size, interpolation=bilinear), T.RandomHorizontalFlip(), *norm])
    test = T.Compose([T.Resize(round(image_size / CROP_FRACTION), interpolation=bilinear),
                      T.CenterCrop(image_size), *norm])
    return train, test


def train_transform(image_size: int, mean: tuple[float, ...], std: tuple[float, ...], recipe):
    """timm's ImageNet training transform (``timm.data.create_transform``) configured as torchvision's
    reference recipe with ``--auto-augment`` / ``--random-erase``: RandomResizedCrop (bilinear, scale
    0.08-1) + horizontal flip + the recipe's auto-augment + normalize + random erasing (constant, one
    box); no colour jitter (torchvision's reference has none)."""
    from timm.data import create_transform

    try:
        return create_transform(image_size, is_training=True, auto_augment=recipe.auto_augment,
                                interpolation="bilinear", mean=mean, std=std, re_prob=recipe.random_erase,
                                re_mode="const", re_count=1, color_jitter=0.0, hflip=0.5)
    except (AssertionError, KeyError, ValueError) as e:
        raise DatasetError(f"auto_augment {recipe.auto_augment!r}: timm cannot build it ({e}); e.g. 'rand-m9-n2'") \
            from None


def imagenet(data_root: Optional[Path] = None, image_size: Optional[int] = None,
             mean: Optional[tuple[float, ...]] = None, std: Optional[tuple[float, ...]] = None) -> ImageFolderBundle:
    """ImageNet-1k (or any ImageFolder dataset): train/ and val/ class folders under ``data_root``."""
    from torchvision.datasets import ImageFolder

    if data_root is None:
        raise DatasetError(f"imagenet: no data root: give --data-root or set PBENCH_DATA ({LAYOUT})")
    if not data_root.is_dir():
        raise DatasetError(f"imagenet: data root {data_root} does not exist ({LAYOUT})")
    train_dir, val_dir = _split_dir(data_root, "train"), _split_dir(data_root, "val")
    size = image_size or DEFAULT_SIZE
    mean, std = tuple(mean or IMAGENET_MEAN), tuple(std or IMAGENET_STD)
    if len(mean) != 3 or len(std) != 3:
        raise DatasetError(f"imagenet: mean/std need 3 values (RGB), got {len(mean)}/{len(std)}")
    t_train, t_test = transforms(size, mean, std)
    try:
        train = ImageFolder(str(train_dir), transform=t_train)
        train_eval = ImageFolder(str(train_dir), transform=t_test)
        test = ImageFolder(str(val_dir), transform=t_test)
    except (FileNotFoundError, OSError) as e:  # a class folder without images
        raise DatasetError(f"imagenet: {e} ({LAYOUT})") from None
    if test.classes != train.classes:
        extra = sorted(set(test.classes) ^ set(train.classes))
        raise DatasetError(f"imagenet: {val_dir} and {train_dir} must hold the same class folders "
                           f"(differ in {', '.join(extra[:3])}{' ...' if len(extra) > 3 else ''})")
    return ImageFolderBundle(
        name="imagenet", num_classes=len(train.classes), in_chans=3, image_size=size, train=train, test=test,
        mean=mean, std=std, train_eval=train_eval, classes=tuple(train.classes))
