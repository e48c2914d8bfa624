"""One base per cell: the base checkpoint's sha256 keys every run and sections every leaderboard;
a track's pinned digest is enforced (one line naming both digests, recorded); pretraining does not
depend on the caller's thread count; the committed digits records come from the base the current
code trains."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from typer.testing import CliRunner

from harness.cli import app
from harness.methods import find_method
from harness.protocol.checkpoints import BaseMismatch, cache_path, initial_model
from harness.protocol.run import RunSpec, evaluate, run_key_of
from harness.store import Store
from harness.tasks import base_sha256, task_for
from harness.views import leaderboard as lb

cli = CliRunner()


def _replace_with_other_weights(track, cache, trained=None) -> str:
    """Overwrite the cached base with another valid checkpoint of the same architecture (the initial
    weights of another seed; or, to have a base that learned, the ``trained`` file's weights nudged by 0.1%);
    returns its sha256."""
    from harness.files import sha256_file
    path = cache_path(track, cache)
    if trained is not None:
        state = torch.load(trained, weights_only=True)
        torch.save({k: v * 1.001 if v.is_floating_point() else v for k, v in state.items()}, path)
        return sha256_file(path)
    other_seed = track.checkpoint.model_copy(update={"pretrain_seed": track.checkpoint.pretrain_seed + 1})
    model = initial_model(track.model_copy(update={"checkpoint": other_seed}), task_for(track).data)
    torch.save(model.state_dict(), path)
    return sha256_file(path)


def _pinned(track, digest, tmp_path):
    data = track.model_dump(mode="json", exclude={"spec_version"})
    data["checkpoint"]["sha256"] = digest
    path = tmp_path / "pinned.yaml"
    path.write_text(yaml.safe_dump(data))
    from harness.tracks import load_track
    return load_track(str(path)), path


def _one_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    assert len(lines) == 1, text
    assert "Traceback" not in text
    return lines[0]


def test_a_cache_holding_another_checkpoint_than_the_pinned_one(tiny_track, tmp_path):
    cache = tmp_path / "cache"
    trained = base_sha256(tiny_track, cache_dir=cache)  # trains the base once
    track, track_file = _pinned(tiny_track, trained, tmp_path)
    assert task_for(track, cache_dir=cache).base_model().sha256 == trained  # the pin holds
    other = _replace_with_other_weights(track, cache)
    assert other != trained
    with pytest.raises(BaseMismatch) as e:
        task_for(track, cache_dir=cache).base_model()
    line = _one_line(str(e.value))
    assert trained in line and other in line

    res = cli.invoke(app, ["pretrain", str(track_file), "--cache-dir", str(cache)])
    assert res.exit_code == 2 and trained in res.output and other in res.output
    assert _one_line(res.output).startswith("error:")

    out = tmp_path / "out"  # a run records the mismatch as its failure, under the pinned base
    res = cli.invoke(app, ["evaluate", "--method", "random", "--track", str(track_file), "--speedup", "2",
                           "--cache-dir", str(cache), "--out", str(out), "--runner", "inprocess", "--no-models"])
    assert res.exit_code == 1, res.output
    assert "FAILED" in _one_line(res.output) and trained in res.output and other in res.output
    [record] = Store.load(out).records.values()
    assert record.status == "failed" and trained in record.error and other in record.error
    assert record.provenance.checkpoint_sha256 == trained

    res = cli.invoke(app, ["sweep", "--methods", "random", "--track", str(track_file), "--speedups", "2",
                           "--seeds", "0", "--cache-dir", str(cache), "--out", str(tmp_path / "sweep"),
                           "--runner", "inprocess", "--no-models"])
    assert res.exit_code == 2 and trained in _one_line(res.output) and other in res.output  # checked up front
    assert not (tmp_path / "sweep").exists() or not list((tmp_path / "sweep").rglob("result.json"))


def test_pretraining_does_not_depend_on_the_callers_threads(tiny_track, tmp_path):
    threads = torch.get_num_threads()
    digests = []
    try:
        for i, n in enumerate((1, 2)):
            torch.set_num_threads(n)
            digests.append(base_sha256(tiny_track, cache_dir=tmp_path / str(i)))
    finally:
        torch.set_num_threads(threads)
    assert digests[0] == digests[1]


def test_two_bases_are_never_one_cell(tiny_track, tmp_path):
    """The same runs from two base checkpoints: two run keys, two leaderboard sections, one warning."""
    cache_a, cache_b = tmp_path / "a", tmp_path / "b"
    digest_a = base_sha256(tiny_track, cache_dir=cache_a)
    cache_path(tiny_track, cache_b).parent.mkdir(parents=True)
    digest_b = _replace_with_other_weights(tiny_track, cache_b, trained=cache_path(tiny_track, cache_a))  # learned
    specs = [RunSpec(track=tiny_track, method=find_method("magnitude_l1"), speedup=2, seed=0, runner="inprocess",
                     out=tmp_path / name, cache_dir=cache, save_models=False, measure_latency=False)
             for name, cache in (("res/a", cache_a), ("res/b", cache_b))]
    assert run_key_of(specs[0]) != run_key_of(specs[1])
    records = [evaluate(s)[0] for s in specs]
    assert all(r.status == "ok" for r in records), [r.error for r in records]
    assert {r.provenance.checkpoint_sha256 for r in records} == {digest_a, digest_b}

    res = cli.invoke(app, ["leaderboard", str(tmp_path / "res")])
    assert res.exit_code == 0, res.output
    warning = [line for line in res.output.splitlines() if line.startswith("warning:")]
    assert len(warning) == 1 and digest_a[:12] in warning[0] and digest_b[:12] in warning[0]
    assert res.output.count("### tiny-digits · base") == 2
    rows = lb.rows(records)
    assert len(rows) == 2 and all(r.final.n == 1 for r in rows)  # never one cell of n = 2
    res = cli.invoke(app, ["leaderboard", str(tmp_path / "res"), "--format", "csv"])
    lines = [line for line in res.output.splitlines() if line and not line.startswith("warning:")]
    assert lines[0].split(",")[2] == "base_sha256"
    assert {line.split(",")[2] for line in lines[1:]} == {digest_a, digest_b}

    # a sweep into a store that holds the other base's record: it says so, and keeps both
    res = cli.invoke(app, ["sweep", "--track", str(_track_file(tiny_track, tmp_path)), "--methods", "magnitude_l1",
                           "--speedups", "2", "--seeds", "0", "--cache-dir", str(cache_b), "--out",
                           str(tmp_path / "res" / "a"), "--runner", "inprocess", "--no-models"])
    assert res.exit_code == 0, res.output
    assert "never pooled" in res.output and digest_a[:12] in res.output
    assert len(Store.load(tmp_path / "res" / "a").records) == 2

    from harness.views.site import build_site
    build_site(records, tmp_path / "site")
    page = (tmp_path / "site" / "tiny-digits.html").read_text()
    assert page.count("<h2>tiny-digits · base") == 2 and 'class="warn"' in page


def _track_file(track, tmp_path):
    path = tmp_path / "track.yaml"
    path.write_text(yaml.safe_dump(track.model_dump(mode="json", exclude={"spec_version"})))
    return path


def test_committed_digits_records_come_from_the_pinned_base():
    from harness.docs import DIGITS_RESULTS
    from harness.tracks import load_track
    pin = load_track("digits-resnet18").checkpoint.sha256
    assert pin, "digits-resnet18 must pin the sha256 of its trained base"
    digests = {json.loads(p.read_text())["provenance"]["checkpoint_sha256"]
               for p in DIGITS_RESULTS.rglob("result.json")}
    assert digests == {pin}


@pytest.mark.slow
def test_the_current_code_trains_the_pinned_digits_base(tmp_path):
    """Trains the digits base from scratch as a fresh machine does: the pinned base of the committed
    records must be what today's code gives, else `make digits-leaderboard` is due."""
    from harness.tracks import load_track
    track = load_track("digits-resnet18")
    unpinned = track.model_copy(update={"checkpoint": track.checkpoint.model_copy(update={"sha256": None})})
    assert task_for(unpinned, cache_dir=tmp_path).base_model().sha256 == track.checkpoint.sha256
