"""End to end through the protocol: determinism, runner equivalence, real accuracy, CIFAR files."""

from __future__ import annotations

import math

import pytest

from harness.methods import find_method
from harness.protocol.run import RunSpec, evaluate
from harness.tracks import load_track


def run(track, method, speedup, seed, out, runner="subprocess", **kw):
    record, _ = evaluate(RunSpec(track=track, method=find_method(method), speedup=speedup, seed=seed,
                                 runner=runner, out=out, **kw))
    assert record.status == "ok", record.error
    return record


def test_same_seed_same_architecture_and_metric_across_runners(tiny_track, tmp_path):
    a = run(tiny_track, "random", 4, 0, tmp_path / "a", runner="subprocess")
    b = run(tiny_track, "random", 4, 0, tmp_path / "b", runner="inprocess")
    assert a.layer_channels == b.layer_channels
    assert (a.macs, a.params, a.metric) == (b.macs, b.params, b.metric)
    assert a.run_key == b.run_key  # the runner does not change what is measured
    c = run(tiny_track, "random", 4, 1, tmp_path / "c", runner="inprocess")
    assert c.layer_channels != a.layer_channels  # another seed draws other channels


def test_record_fields(tiny_track, tmp_path):
    r = run(tiny_track, "magnitude_l1", 8, 0, tmp_path)
    assert r.speedup.achieved >= 8 and r.macs.pruned * r.speedup.achieved == pytest.approx(r.macs.base)
    assert r.min_channel_fraction >= 0.1
    assert all(after >= math.ceil(0.1 * before) for before, after in r.layer_channels.values())
    assert r.metric.delta == pytest.approx(r.metric.final - r.metric.base)
    assert r.params.pruned < r.params.base
    assert r.provenance.packages["torch-pruning"] == "1.6.1"  # not tp.__version__, which says 1.6.0
    assert len(r.provenance.checkpoint_sha256) == 64 and r.track.hash == tiny_track.hash()
    assert r.timing.step_s > 0 and r.timing.retrain_s > 0 and r.timing.total_s >= r.timing.step_s


@pytest.mark.slow
def test_digits_track_reaches_accuracy_well_above_chance(tmp_path):
    """The embedded default track (what `make demo` runs): chance is 10%."""
    r = run(load_track("digits-resnet18"), "magnitude_l2", 4, 0, tmp_path, save_models=False)
    assert r.metric.base >= 90
    assert r.metric.final >= 85
    assert r.speedup.achieved >= 4


@pytest.mark.slow
def test_cifar10_files_end_to_end(tmp_path):
    from harness.data.fixtures import write_tiny_cifar
    from harness.cli import app
    from typer.testing import CliRunner
    write_tiny_cifar(tmp_path / "data", kind="cifar10", n_train=256, n_test=128, seed=0)
    track = tmp_path / "tiny-cifar10.yaml"
    track.write_text("""
id: tiny-cifar10
model: {name: resnet18, kwargs: {width: 0.125}}
dataset: {name: cifar10}
checkpoint: {pretrain: {epochs: 3, batch_size: 64, lr: 0.05, augmentation: crop_flip}, chance_margin: null}
pruning: {speedups: [2]}
calibration: {num_samples: 64, batch_size: 32}
sparsify: {epochs: 1, batch_size: 64, lr: 0.01}
retrain: {epochs: 1, batch_size: 64, lr: 0.01, augmentation: crop_flip}
""")
    res = CliRunner().invoke(app, ["evaluate", "--method", "magnitude_l1", "--track", str(track), "--speedup", "2",
                                   "--data-root", str(tmp_path / "data"), "--out", str(tmp_path / "out")])
    assert res.exit_code == 0, res.output
    assert "magnitude_l1 2x seed 0: top1 base" in res.output


def test_base_checkpoint_depends_on_the_track_only(tiny_track, tmp_path):
    """Pretraining gives the same weights whatever the global generator's state (which a run's
    seed sets before the base model is needed), so every seed and every machine shares one base."""
    import torch
    from harness.tasks import task_for
    digests = []
    for i, seed in enumerate((0, 12345)):
        torch.manual_seed(seed)
        base = task_for(tiny_track, cache_dir=tmp_path / str(i)).base_model()
        digests.append(base.sha256)
    assert digests[0] == digests[1]
