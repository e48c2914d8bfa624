"""Dataset loaders: the registry-wide contract, digits, and CIFAR through real fixture files."""

from __future__ import annotations

import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from harness.data import DATASETS, DatasetBundle, DatasetError, load_dataset
from harness.data.cifar import LAYOUTS
from harness.data.digits import DIGITS_MEAN, DIGITS_STD, digits_arrays
from harness.data.fixtures import tiny_cifar_arrays, write_tiny_cifar
from harness.registry import UnknownName

REPO = Path(__file__).resolve().parents[1]
N_TRAIN, N_TEST = 60, 20


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory) -> Path:
    """One data root holding tiny CIFAR-10 and CIFAR-100, seed 0."""
    root = tmp_path_factory.mktemp("tiny")
    for kind in LAYOUTS:
        write_tiny_cifar(root, kind, n_train=N_TRAIN, n_test=N_TEST, seed=0)
    return root


#: the in-memory classification datasets; imagenet (image files, decoded on the fly) and coco
#: (detection) have their own tests in tests/test_models_zoo.py and tests/test_detection.py
IN_MEMORY = [n for n in DATASETS.names() if n not in ("imagenet", "coco")]


def data_root_for(name: str, tiny_root: Path) -> Path | None:
    """How the contract test gets data for each registered dataset."""
    if name == "digits":
        return None
    if name in LAYOUTS:
        return tiny_root
    pytest.fail(f"dataset {name!r} is registered but tests/test_data.py has no fixture for it; add one")


def _x(ds) -> torch.Tensor:
    return ds.tensors[0]


def _y(ds) -> torch.Tensor:
    return ds.tensors[1]


# --- contract, generated from the registry -----------------------------------------


@pytest.mark.parametrize("name", IN_MEMORY)
def test_contract(name, tiny_root):
    b = load_dataset(name, data_root_for(name, tiny_root))
    assert isinstance(b, DatasetBundle) and b.name == name and b.task == "classification"
    assert len(b.mean) == len(b.std) == b.in_chans
    for split in (b.train, b.test):
        assert len(split) > 0
        x, y = split[0]
        assert x.dtype == torch.float32 and x.shape == (b.in_chans, b.image_size, b.image_size)
        assert 0 <= int(y) < b.num_classes
        assert isinstance(split, torch.utils.data.TensorDataset)
        assert _y(split).dtype == torch.int64


@pytest.mark.parametrize("name", IN_MEMORY)
def test_image_size_resizes(name, tiny_root):
    b = load_dataset(name, data_root_for(name, tiny_root), image_size=16)
    assert b.image_size == 16
    assert b.train[0][0].shape == (b.in_chans, 16, 16)
    # Bilinear resizing and normalization commute, so the overall mean barely moves.
    native = load_dataset(name, data_root_for(name, tiny_root))
    assert _x(b.train).mean().item() == pytest.approx(_x(native.train).mean().item(), abs=0.05)


# --- digits ---------------------------------------------------------------------------


def test_digits_sizes_and_shape():
    b = load_dataset("digits", data_root="/ignored/on/purpose")
    assert (len(b.train), len(b.test)) == (1437, 360)
    assert (b.num_classes, b.in_chans, b.image_size) == (10, 1, 8)
    assert _x(b.train).shape == (1437, 1, 8, 8)
    assert set(_y(b.train).tolist()) == set(range(10))
    # Stratified: every class has 35-37 test images (~20% of 174..183).
    assert torch.bincount(_y(b.test), minlength=10).min() >= 34


def test_digits_split_is_deterministic():
    a, b = load_dataset("digits"), load_dataset("digits")
    for split in ("train", "test"):
        assert torch.equal(_x(getattr(a, split)), _x(getattr(b, split)))
        assert torch.equal(_y(getattr(a, split)), _y(getattr(b, split)))


def test_digits_normalization_stats():
    x_tr, x_te, _, _ = digits_arrays()
    # The written-down constants are the train split's population statistics.
    assert DIGITS_MEAN == pytest.approx(x_tr.mean(), abs=1e-12)
    assert DIGITS_STD == pytest.approx(x_tr.std(), abs=1e-12)
    b = load_dataset("digits")
    assert _x(b.train).mean().item() == pytest.approx(0.0, abs=1e-5)
    assert _x(b.train).std(unbiased=False).item() == pytest.approx(1.0, abs=1e-5)
    # The test split uses the train statistics, not its own.
    expected = torch.from_numpy((x_te - DIGITS_MEAN) / DIGITS_STD).float().unsqueeze(1)
    assert torch.allclose(_x(b.test), expected, atol=1e-5)


# --- CIFAR round trip through the fixture writer -----------------------------------------


@pytest.mark.parametrize("kind", sorted(LAYOUTS))
def test_cifar_round_trip(kind, tiny_root):
    layout = LAYOUTS[kind]
    b = load_dataset(kind, tiny_root)
    assert (b.num_classes, b.in_chans, b.image_size) == (layout.num_classes, 3, 32)
    assert (len(b.train), len(b.test)) == (N_TRAIN, N_TEST)
    x_tr, y_tr, x_te, y_te = tiny_cifar_arrays(layout.num_classes, N_TRAIN, N_TEST, seed=0)
    assert torch.equal(_y(b.train), torch.from_numpy(y_tr))
    assert torch.equal(_y(b.test), torch.from_numpy(y_te))
    # Un-normalize one image and compare with the raw pixels that were written.
    i = 7
    mean = torch.tensor(b.mean).view(3, 1, 1)
    std = torch.tensor(b.std).view(3, 1, 1)
    raw = (_x(b.train)[i] * std + mean) * 255
    assert torch.equal(raw.round().to(torch.uint8), torch.from_numpy(x_tr[i]))
    assert (raw - raw.round()).abs().max() < 1e-3


@pytest.mark.parametrize("kind", sorted(LAYOUTS))
def test_cifar_root_may_be_the_batches_folder(kind, tiny_root):
    a = load_dataset(kind, tiny_root)
    b = load_dataset(kind, tiny_root / LAYOUTS[kind].folder)
    assert torch.equal(_x(a.test), _x(b.test))


def test_fixture_files_have_the_official_format(tiny_root):
    folder = tiny_root / "cifar-10-batches-py"
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        ["batches.meta", "test_batch"] + [f"data_batch_{i}" for i in range(1, 6)]
    )
    raw = (folder / "data_batch_1").read_bytes()
    assert raw[:2] == b"\x80\x02"  # pickle protocol 2
    assert b"cnumpy.core.multiarray\n_reconstruct\n" in raw  # as numpy 1 wrote it
    with (folder / "data_batch_1").open("rb") as f:
        d = pickle.load(f, encoding="bytes")
    assert set(d) == {b"batch_label", b"data", b"filenames", b"labels"}
    assert d[b"data"].dtype == np.uint8 and d[b"data"].shape == (N_TRAIN // 5, 3072)
    with (tiny_root / "cifar-100-python" / "train").open("rb") as f:
        d = pickle.load(f, encoding="bytes")
    assert {b"fine_labels", b"coarse_labels"} <= set(d)
    assert [c for c in d[b"coarse_labels"]] == [f // 5 for f in d[b"fine_labels"]]
    with (tiny_root / "cifar-100-python" / "meta").open("rb") as f:
        meta = pickle.load(f, encoding="bytes")
    assert len(meta[b"fine_label_names"]) == 100 and len(meta[b"coarse_label_names"]) == 20


@pytest.mark.parametrize("kind", sorted(LAYOUTS))
def test_fixture_reads_with_torchvision(kind, tiny_root, monkeypatch):
    """An independent reader of the official format (latin1, str keys) agrees with ours."""
    tv_cifar = pytest.importorskip("torchvision.datasets.cifar")
    monkeypatch.setattr(tv_cifar, "check_integrity", lambda *a, **k: True)  # md5 of the originals
    cls = tv_cifar.CIFAR10 if kind == "cifar10" else tv_cifar.CIFAR100
    ds = cls(str(tiny_root), train=True, download=False)
    b = load_dataset(kind, tiny_root)
    assert ds.targets == _y(b.train).tolist()
    raw = torch.from_numpy(ds.data).permute(0, 3, 1, 2).float() / 255  # NHWC -> NCHW
    mean, std = torch.tensor(b.mean).view(1, 3, 1, 1), torch.tensor(b.std).view(1, 3, 1, 1)
    assert torch.allclose((raw - mean) / std, _x(b.train), atol=1e-6)


def test_tiny_cifar_is_learnable(tmp_path):
    write_tiny_cifar(tmp_path, "cifar10", n_train=500, n_test=200, seed=1)
    b = load_dataset("cifar10", tmp_path)
    x, y = _x(b.train).flatten(1), _y(b.train)
    centroids = torch.stack([x[y == c].mean(0) for c in range(10)])
    pred = torch.cdist(_x(b.test).flatten(1), centroids).argmin(1)
    assert (pred == _y(b.test)).float().mean() > 0.4  # chance is 0.1


def test_fixture_writer_is_deterministic(tmp_path):
    a = write_tiny_cifar(tmp_path / "a", "cifar100", n_train=20, n_test=10, seed=3)
    b = write_tiny_cifar(tmp_path / "b", "cifar100", n_train=20, n_test=10, seed=3)
    for f in ("train", "test", "meta"):
        assert (a / f).read_bytes() == (b / f).read_bytes()


def test_make_tiny_script(tmp_path):
    out = tmp_path / "out"
    r = subprocess.run(
        [sys.executable, str(REPO / "datasets" / "make_tiny.py"), "cifar10", str(out), "--n-train", "10", "--n-test", "5"],
        capture_output=True, text=True, cwd=tmp_path, timeout=120,
    )
    assert r.returncode == 0, r.stderr
    b = load_dataset("cifar10", out)
    assert (len(b.train), len(b.test)) == (10, 5)


# --- errors ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(LAYOUTS))
def test_cifar_requires_data_root(kind):
    with pytest.raises(DatasetError, match="no data root: give --data-root or set PBENCH_DATA"):
        load_dataset(kind)


def test_cifar_missing_root(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(DatasetError) as e:
        load_dataset("cifar10", missing)
    msg = str(e.value)
    assert str(missing / "cifar-10-batches-py" / "data_batch_1") in msg
    assert "\n" not in msg and "datasets/README.md" in msg


def test_cifar_wrong_layout(tmp_path):
    (tmp_path / "cifar-100-python").mkdir()
    with pytest.raises(DatasetError, match=str(tmp_path / "cifar-100-python" / "train")):
        load_dataset("cifar100", tmp_path)


def test_cifar_missing_batch_file(tmp_path):
    folder = write_tiny_cifar(tmp_path, "cifar10", n_train=10, n_test=5)
    (folder / "data_batch_3").unlink()
    with pytest.raises(DatasetError, match=str(folder / "data_batch_3")):
        load_dataset("cifar10", tmp_path)


def test_cifar_corrupt_file(tmp_path):
    folder = write_tiny_cifar(tmp_path, "cifar10", n_train=10, n_test=5)
    (folder / "test_batch").write_bytes(b"not a pickle")
    with pytest.raises(DatasetError, match="test_batch is not a CIFAR python-pickle batch"):
        load_dataset("cifar10", tmp_path)


def test_cifar_wrong_shape(tmp_path):
    folder = write_tiny_cifar(tmp_path, "cifar10", n_train=10, n_test=5)
    with (folder / "test_batch").open("wb") as f:
        pickle.dump({b"data": np.zeros((5, 100), np.uint8), b"labels": [0] * 5}, f, protocol=2)
    with pytest.raises(DatasetError, match=r"uint8 \[N, 3072\]"):
        load_dataset("cifar10", tmp_path)


class _Exploit:
    def __reduce__(self):
        return (print, ("pwned",))


def test_cifar_refuses_code_in_pickles(tmp_path, capsys):
    folder = write_tiny_cifar(tmp_path, "cifar10", n_train=10, n_test=5)
    with (folder / "test_batch").open("wb") as f:
        pickle.dump({b"data": _Exploit(), b"labels": []}, f, protocol=2)
    with pytest.raises(DatasetError, match=r"refusing to load global (__builtin__|builtins)\.print"):
        load_dataset("cifar10", tmp_path)
    assert "pwned" not in capsys.readouterr().out


def test_unknown_dataset_suggests():
    with pytest.raises(UnknownName) as e:
        load_dataset("cifar")
    assert "'cifar10'" in str(e.value)


def test_bad_image_size():
    with pytest.raises(DatasetError, match="image_size"):
        load_dataset("digits", image_size=0)
