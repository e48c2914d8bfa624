"""scikit-learn's 8x8 handwritten digits: a real, offline dataset for fast end-to-end runs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from harness.data.base import DATASETS, DatasetBundle, to_tensor_dataset

# Population mean/std over every pixel of the fixed train split, pixels scaled to
# [0, 1]. Written down rather than recomputed so that normalization can never
# drift with a library version; tests/test_data.py recomputes and compares.
DIGITS_MEAN = 0.30538339422407795
DIGITS_STD = 0.3761191680900195
DIGITS_SPLIT = dict(test_size=0.2, random_state=0)  # stratified by label


def digits_arrays() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The fixed split as raw arrays: x in [0, 1], shape [N, 8, 8] float64; y int64."""
    # Imported here: scikit-learn is slow to import and only this dataset needs it.
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = d.images.astype(np.float64) / 16.0  # pixel values are counts 0..16
    y = d.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, stratify=y, **DIGITS_SPLIT)
    return x_tr, x_te, y_tr, y_te


@DATASETS.decorator
def digits(data_root: Path | None = None, image_size: int | None = None) -> DatasetBundle:
    """1797 8x8 grey images, 10 classes; 1437 train / 360 test. ``data_root`` is ignored."""
    x_tr, x_te, y_tr, y_te = digits_arrays()

    def split(x: np.ndarray, y: np.ndarray):
        xt = torch.from_numpy(x).to(torch.float32).unsqueeze(1)  # [N, 1, 8, 8]
        return to_tensor_dataset(xt, torch.from_numpy(y), (DIGITS_MEAN,), (DIGITS_STD,), image_size)

    return DatasetBundle(
        name="digits",
        num_classes=10,
        in_chans=1,
        image_size=image_size or 8,
        train=split(x_tr, y_tr),
        test=split(x_te, y_te),
        mean=(DIGITS_MEAN,),
        std=(DIGITS_STD,),
    )
