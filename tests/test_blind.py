"""Blind evaluation over a folder of good, failing, hanging, prying and tampered bundles: the right
status for each, redacted reasons, and a leaderboard of the good ones only."""

from __future__ import annotations

import json
import os
import shutil

import pytest
from typer.testing import CliRunner

from conftest import REPO

docker = pytest.importorskip("docker")
try:
    docker.from_env(timeout=30).ping()
except Exception as e:  # noqa: BLE001
    if os.environ.get("CI"):
        raise RuntimeError(f"CI must provide a Docker Engine (make docker): {e}")
    pytest.skip(f"no Docker Engine reachable ({type(e).__name__})", allow_module_level=True)

from harness.cli import app  # noqa: E402
from harness.data.fixtures import write_tiny_cifar  # noqa: E402
from harness.methods import load_source  # noqa: E402
from harness.orchestration.submission import _save_image, build_image  # noqa: E402
from specs.submission import Submission  # noqa: E402

pytestmark = pytest.mark.docker

HIDDEN_TRACK = """
id: hidden-cifar10
model: {name: resnet18, kwargs: {width: 0.125}}
dataset: {name: cifar10}
checkpoint: {pretrain: {epochs: 2, batch_size: 64, lr: 0.05}, chance_margin: null}  # synthetic CIFAR fixture: a smoke base
pruning: {speedups: [2]}
calibration: {num_samples: 32, batch_size: 32}
sparsify: {epochs: 1, batch_size: 64, lr: 0.01}
retrain: {epochs: 1, batch_size: 64, lr: 0.01}
seeds: [0]
"""


def _hostile_bundle(good: Submission, good_dir, dest, mode: str, target: str = ""):
    """A bundle of the hostile test image whose manifest defaults to ``mode``."""
    src = load_source(REPO / "tests" / "fixtures" / "hostile_method")
    tag = build_image(src)
    dest.mkdir()
    sha, size = _save_image(tag, dest / "image.tar")
    import docker as d
    digest = d.from_env().images.get(tag).id
    manifest = src.manifest.model_dump(mode="json")
    manifest["hyperparameters"]["mode"]["default"] = mode
    manifest["hyperparameters"]["target"]["default"] = target
    sub = good.model_dump(mode="json")
    sub["manifest"] = manifest
    sub["image"] = {"tag": tag, "digest": digest, "archive": "image.tar", "archive_sha256": sha, "size_bytes": size}
    sub["conformance"]["image_digest"] = digest
    (dest / "submission.json").write_text(json.dumps(sub))


def test_blind_eval_statuses(tiny_track_file, tmp_path):
    runner = CliRunner()
    subs = tmp_path / "subs"
    assert runner.invoke(app, ["new-method", "blind_ok", "--dest", str(tmp_path)]).exit_code == 0
    res = runner.invoke(app, ["submit", str(tmp_path / "blind_ok"), "--out", str(subs),
                              "--smoke-track", str(tiny_track_file)])
    assert res.exit_code == 0, res.output
    good_dir = subs / "blind_ok-0.1.0"
    good = Submission.model_validate_json((good_dir / "submission.json").read_text())

    hidden = tmp_path / "hidden-data"
    write_tiny_cifar(hidden, kind="cifar10", n_train=128, n_test=64, seed=1)
    secret = str(hidden / "cifar-10-batches-py" / "test_batch")
    _hostile_bundle(good, good_dir, subs / "nan-1.0.0", "nan")
    _hostile_bundle(good, good_dir, subs / "sleepy-1.0.0", "sleep")
    _hostile_bundle(good, good_dir, subs / "prying-1.0.0", "read_host", target=secret)
    tampered = subs / "tampered-0.1.0"  # claims the good image, ships the hostile one
    tampered.mkdir()
    shutil.copy(subs / "nan-1.0.0" / "image.tar", tampered / "image.tar")
    claim = good.model_dump(mode="json")
    claim["image"]["archive_sha256"] = json.loads((subs / "nan-1.0.0" / "submission.json").read_text())[
        "image"]["archive_sha256"]
    (tampered / "submission.json").write_text(json.dumps(claim))
    (subs / "garbage-0.0.1").mkdir()
    (subs / "garbage-0.0.1" / "submission.json").write_text("{not json")
    # hostile bundles the checks must reject in one line while the others are still evaluated (issue 18)
    (subs / "fifo-0.0.1").mkdir()
    os.mkfifo(subs / "fifo-0.0.1" / "submission.json")  # a read would block forever
    (subs / "latin-0.0.1").mkdir()
    (subs / "latin-0.0.1" / "submission.json").write_bytes(b"\xff\xfe{}")
    outside = good.model_dump(mode="json")
    outside["image"]["archive"] = "../blind_ok-0.1.0/image.tar"  # an archive outside its bundle
    (subs / "outside-0.1.0").mkdir()
    (subs / "outside-0.1.0" / "submission.json").write_text(json.dumps(outside))
    import hashlib
    import io
    import tarfile
    odd = subs / "odd-0.1.0"  # an archive whose index.json has the wrong shapes
    odd.mkdir()
    with tarfile.open(odd / "image.tar", "w") as tar:
        data = json.dumps({"manifests": 5}).encode()
        info = tarfile.TarInfo("index.json")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    claim_odd = good.model_dump(mode="json")
    claim_odd["image"]["archive_sha256"] = hashlib.sha256((odd / "image.tar").read_bytes()).hexdigest()
    (odd / "submission.json").write_text(json.dumps(claim_odd))

    track = tmp_path / "hidden.yaml"
    track.write_text(HIDDEN_TRACK)
    out = tmp_path / "blind"
    res = runner.invoke(app, ["blind-eval", "--submissions", str(subs), "--track", str(track), "--data-root",
                              str(hidden), "--out", str(out), "--call-timeout", "5"])
    assert res.exit_code == 0, res.output
    status = {s["bundle"]: s["status"] for s in json.loads((out / "status.json").read_text())}
    assert status["blind_ok-0.1.0"] == "ok"
    assert status["nan-1.0.0"].startswith("failed: ") and "NaN" in status["nan-1.0.0"]
    assert status["sleepy-1.0.0"] == "timeout"
    assert status["prying-1.0.0"].startswith("failed: ") and "FileNotFoundError" in status["prying-1.0.0"]
    assert status["tampered-0.1.0"] == "rejected: digest mismatch"
    assert status["garbage-0.0.1"].startswith("rejected: invalid submission.json")
    assert status["fifo-0.0.1"] == "rejected: no submission.json (a regular file)"
    assert status["latin-0.0.1"].startswith("rejected: invalid submission.json")
    assert status["outside-0.1.0"].startswith("rejected: invalid submission.json") and "archive" in status[
        "outside-0.1.0"]
    assert status["odd-0.1.0"].startswith("rejected: ") and "\n" not in status["odd-0.1.0"]
    text = (out / "status.json").read_text() + res.output
    assert str(hidden) not in text and "<hidden>" in status["prying-1.0.0"]  # redacted for submitters
    board = (out / "leaderboard.md").read_text()
    assert "| hidden-cifar10 | 2x |" in board and "my_method" not in board
    assert "blind_ok" in board and "hostile" not in board
