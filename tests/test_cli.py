"""The CLI, driven through Typer's CliRunner: listings, a full run, and bad input."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from harness.cli import app
from harness.store import read_record
from harness.store import find_records

runner = CliRunner()


def invoke(*args):
    result = runner.invoke(app, [str(a) for a in args])
    assert "Traceback" not in result.output, result.output
    return result


def test_methods_and_tracks_list_the_registries():
    from harness.methods import discover
    from harness.tracks import registry
    res = invoke("methods")
    assert res.exit_code == 0, res.output
    for mid in discover().names():
        assert mid in res.output
    res = invoke("tracks")
    assert res.exit_code == 0, res.output
    for tid in registry().names():
        assert tid in res.output


def test_evaluate_then_leaderboard(tiny_track_file, tmp_path):
    res = invoke("evaluate", "--method", "magnitude_l2", "--track", tiny_track_file, "--speedup", 2,
                 "--seed", 0, "--out", tmp_path)
    assert res.exit_code == 0, res.output
    assert "magnitude_l2 2x seed 0" in res.output and "speedup 2.0" in res.output
    [path] = find_records(tmp_path)
    record = read_record(path)
    assert record.status == "ok" and record.method.runner == "subprocess"
    assert {"pruned.pt", "final.pt"} == set(record.files)
    res = invoke("leaderboard", tmp_path)
    assert res.exit_code == 0, res.output
    assert "| tiny-digits | 2x | protected_global | 1 | magnitude_l2 |" in res.output
    res = invoke("leaderboard", tmp_path, "--format", "csv")
    assert res.output.splitlines()[0].startswith("track,track_hash,base_sha256,speedup,strategy,recipe,importance,"
                                                 "regularizer,n,mean,std,ci95_low,ci95_high,rank,")


def test_leaderboard_reports_an_invalid_record(tmp_path):
    bad = tmp_path / "x" / "result.json"
    bad.parent.mkdir()
    bad.write_text(json.dumps({"status": "ok"}))
    res = invoke("leaderboard", tmp_path)
    assert res.exit_code != 0
    assert "invalid result record" in res.output


@pytest.mark.parametrize("args, message", [
    (["--method", "magnitude_l3", "--model", "resnet18", "--dataset", "digits", "--speedup", "2"],
     "unknown method 'magnitude_l3'; did you mean 'magnitude_l2' or 'magnitude_l1'"),
    (["--method", "magnitude_l2", "--model", "resnet19", "--dataset", "digits", "--speedup", "2"],
     "unknown model 'resnet19'; did you mean 'resnet18'"),
    (["--method", "magnitude_l2", "--model", "resnet18", "--dataset", "digit", "--speedup", "2"],
     "unknown dataset 'digit'; did you mean 'digits'"),
    (["--method", "magnitude_l2", "--model", "resnet18", "--dataset", "digits", "--speedup", "0.5"],
     "speedup must be > 1"),
    (["--method", "magnitude_l2", "--model", "vgg19", "--dataset", "imagenet", "--speedup", "2"],
     "imagenet's default track imagenet-resnet18 starts from a published resnet18 checkpoint, which vgg19 cannot "
     "load"),
    (["--method", "magnitude_l2", "--model", "resnet18", "--dataset", "cifar10", "--speedup", "2"],
     "--data-root"),
    (["--method", "magnitude_l2", "--track", "digits-resnet18", "--speedup", "2", "--hp", "p=7"],
     "hyperparameter 'p' 7 is above the maximum 2"),
    (["--method", "magnitude_l2", "--track", "digits-resnet18", "--speedup", "2", "--hp", "q=1"],
     "method 'magnitude_l2' has no hyperparameter 'q'"),
    (["--method", "magnitude_l2", "--speedup", "2"], "give --track, or --model"),
    (["--method", "magnitude_l2", "--model", "resnet18"], "model 'resnet18' has 4 tracks"),
    (["--method", "magnitude_l2", "--model", "yolov8"], "COCO 2017 layout"),
    (["--method", "magnitude_l2", "--track", "nope", "--speedup", "2"], "unknown track 'nope'"),
    (["--method", "magnitude_l2", "--track", "digits-resnet18", "--speedup", "2", "--seed", "-1"],
     "seeds must be >= 0, got -1"),
])
def test_bad_input_is_one_line_and_exit_2(args, message, tmp_path):
    res = invoke("evaluate", *args, "--out", tmp_path)
    assert res.exit_code == 2, res.output
    assert message in " ".join(res.output.split()), res.output
    assert not list(find_records(tmp_path))


def test_the_data_root_comes_from_pbench_data(tmp_path, monkeypatch):
    """The card's command without --data-root reads PBENCH_DATA (here a folder without COCO in it)."""
    monkeypatch.setenv("PBENCH_DATA", str(tmp_path / "data"))
    (tmp_path / "data").mkdir()
    res = invoke("evaluate", "--method", "fpgm", "--model", "yolov8", "--out", tmp_path / "out")
    assert res.exit_code == 2 and f"coco: expected {tmp_path / 'data'}/annotations/" in " ".join(res.output.split())
    assert len(res.output.strip().splitlines()) == 1 and not list(find_records(tmp_path / "out"))


def test_speedup_must_be_a_number(tmp_path):
    res = invoke("evaluate", "--method", "random", "--track", "digits-resnet18", "--speedup", "abc")
    assert res.exit_code == 2 and "Invalid value for '--speedup'" in res.output


@pytest.mark.parametrize("content, message", [
    ("id: [unclosed", "not valid YAML at line 1"),
    ("- a list", "a track file must be a mapping"),
    ("id: t\nmodel: {name: resnet18}\n", "invalid track: dataset: Field required"),
    ("id: t\nmodel: {name: resnet18}\ndataset: {name: digits}\ncheckpoint: {pretrain: {epochs: 1, batch_size: 8, "
     "lr: 0.1}}\npruning: {speedups: [2]}\ncalibration: {num_samples: 8, batch_size: 8}\n"
     "sparsify: {epochs: 1, batch_size: 8, lr: 0.1}\nretrain: {epochs: 1, batch_size: 8, lr: -1}\n",
     "invalid track: retrain.lr: Input should be greater than 0"),
])
def test_malformed_track_file(content, message, tmp_path):
    path = tmp_path / "track.yaml"
    path.write_text(content)
    res = invoke("evaluate", "--method", "random", "--track", path, "--speedup", "2", "--out", tmp_path)
    assert res.exit_code == 2, res.output
    assert message in " ".join(res.output.split()), res.output


def test_missing_checkpoint_names_the_expected_path(tiny_track, tmp_path):
    track = tiny_track.model_copy(update={"checkpoint": tiny_track.checkpoint.model_copy(
        update={"path": str(tmp_path / "base.pt"), "sha256": "a" * 64})})
    path = tmp_path / "t.json"
    path.write_text(track.model_dump_json())
    res = invoke("evaluate", "--method", "random", "--track", path, "--speedup", "2", "--out", tmp_path)
    assert res.exit_code == 2
    assert f"base checkpoint not found: expected {tmp_path / 'base.pt'} (sha256 {'a' * 64})" in \
        " ".join(res.output.split())


def test_wrong_checkpoint_hash(tiny_track, tmp_path):
    (tmp_path / "base.pt").write_bytes(b"not the right file")
    track = tiny_track.model_copy(update={"checkpoint": tiny_track.checkpoint.model_copy(
        update={"path": str(tmp_path / "base.pt"), "sha256": "b" * 64})})
    path = tmp_path / "t.json"
    path.write_text(track.model_dump_json())
    res = invoke("evaluate", "--method", "random", "--track", path, "--speedup", "2", "--out", tmp_path)
    assert res.exit_code == 2
    assert "does not match the track's " + "b" * 64 in " ".join(res.output.split())


@pytest.mark.parametrize("command, args, message", [
    ("sweep", ["--track", "digits-resnet18", "--methods", "magnitude_l2", "--speedups", "2", "--seeds", "0,0",
               "--dry-run"], "seed 0 is given twice"),
    ("sweep", ["--track", "digits-resnet18", "--methods", "magnitude_l2", "--speedups", "2,4,2", "--dry-run"],
     "speedup 2 is given twice"),
    ("sweep", ["--track", "digits-resnet18", "--methods", "", "--speedups", "2", "--dry-run"], "--methods: empty list"),
    ("sweep", ["--track", "digits-resnet18", "--methods", "magnitude_l2", "--seeds", "", "--dry-run"],
     "--seeds: empty list"),
    ("blind-eval", ["--submissions", "/nonexistent-bundles", "--track", "digits-resnet18"],
     "/nonexistent-bundles: not a folder"),
])
def test_what_the_outside_review_found_is_one_line_and_exit_2(command, args, message, tmp_path):
    """Duplicates would run the same run twice; an empty list meant "all"; a missing submissions folder was a
    traceback."""
    res = invoke(command, *args, "--out", tmp_path)
    assert res.exit_code == 2, res.output
    assert message in " ".join(res.output.split()) and "Traceback" not in res.output, res.output
    assert not list(find_records(tmp_path))
