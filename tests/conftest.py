"""Shared fixtures: an isolated checkpoint cache, a tiny digits track, hostile-method factories."""

from __future__ import annotations

import json
import os
import textwrap
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ["PBENCH_NO_PROGRESS"] = "1"

REPO = Path(__file__).resolve().parents[1]

TINY_TRACK = """
id: tiny-digits
description: test track - quarter-width ResNet-18 on digits, short recipes
model: {name: resnet18, kwargs: {width: 0.25}}
dataset: {name: digits}
checkpoint:
  pretrain: {epochs: 4, batch_size: 64, lr: 0.05, schedule: cosine}
pruning: {strategy: protected_global, speedups: [2, 4, 8]}
calibration: {num_samples: 64, batch_size: 32}
sparsify: {epochs: 1, batch_size: 64, lr: 0.01, schedule: constant}
retrain: {epochs: 1, batch_size: 64, lr: 0.01, schedule: cosine}
seeds: [0, 1]
"""


@pytest.fixture(scope="session", autouse=True)
def pbench_cache(tmp_path_factory) -> Path:
    """One checkpoint cache per test session (base models are trained once)."""
    cache = Path(os.environ.get("PBENCH_TEST_CACHE") or tmp_path_factory.mktemp("pbench-cache"))
    os.environ["PBENCH_CACHE"] = str(cache)
    return cache


@pytest.fixture(scope="session")
def tiny_track_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("tracks") / "tiny-digits.yaml"
    path.write_text(TINY_TRACK)
    return path


@pytest.fixture(scope="session")
def tiny_track(tiny_track_file):
    from harness.tracks import load_track
    return load_track(str(tiny_track_file))


MANIFEST = {
    "spec_version": "1.0", "id": "hostile", "version": "0.0.1", "name": "Hostile",
    "provides": ["importance"], "observations": ["weights"],
    "resources": {"memory_mb": 512, "cpus": 1, "call_timeout_s": 30},
}


@pytest.fixture
def make_method(tmp_path):
    """Write a method folder: make_method(code, **manifest_overrides) -> MethodSource."""
    def make(code: str, **overrides):
        from harness.methods import load_source
        d = tmp_path / f"method-{len(list(tmp_path.iterdir()))}"
        d.mkdir()
        (d / "manifest.json").write_text(json.dumps({**MANIFEST, **overrides}))
        (d / "method.py").write_text(textwrap.dedent(code))
        return load_source(d)
    return make
