"""``sweep --dry-run``: projected device time per run shape and for the sweep, measured with the real
stages on this device; nothing is written; recorded runs are not counted; the projection of a run is
checked against the same run's measured stage times."""

from __future__ import annotations

import re

import pytest
from typer.testing import CliRunner

from harness.cli import app
from harness.store import Store, find_records

pytestmark = pytest.mark.slow


def _sweep(track, out, *extra):
    return ["sweep", "--track", str(track), "--methods", "magnitude_l2", "--speedups", "2", "--seeds", "0",
            "--out", str(out), "--no-models", *extra]


def test_dry_run_projects_the_runs_it_would_run(tiny_track_file, tmp_path):
    from harness.orchestration.estimate import estimate
    from harness.plan import Plan
    out = tmp_path / "out"
    plan = Plan.build(track=str(tiny_track_file), methods=["magnitude_l2"], regularizers=["-", "group_norm"],
                      speedups=[2], seeds=[0, 1], out=out, save_models=False)
    cost = estimate(plan.resolve())
    assert [(s.name, s.speedup, s.runs) for s in cost.shapes] == [("magnitude_l2", 2, 2),
                                                                  ("magnitude_l2+group_norm", 2, 2)]
    stages = [[st.stage for st in s.stages] for s in cost.shapes]
    assert stages == [["prune", "retrain", "evaluate", "latency"], ["sparsify", "prune", "retrain", "evaluate",
                                                                     "latency"]]
    assert all(st.seconds > 0 for s in cost.shapes for st in s.stages)
    from harness.protocol.checkpoints import cache_path
    from harness.tracks import load_track
    assert (cost.pretrain is None) == cache_path(load_track(str(tiny_track_file))).exists()
    assert cost.runs == 4 and cost.device_hours == pytest.approx(cost.seconds / 3600)
    assert not out.exists() or not find_records(out)  # nothing was written

    res = CliRunner().invoke(app, _sweep(tiny_track_file, out, "--dry-run"))
    assert res.exit_code == 0, res.output
    assert re.search(r"\| magnitude_l2 \| 2x \| 1 \|", res.output) and "device-hours" in res.output

    # the projection is the run's own budget x the measured cost of a step: the retraining of the run it
    # projects (how close the seconds come is benchmarks/dry_run_accuracy.py: wall time on a shared
    # 2-core machine is no test)
    track = load_track(str(tiny_track_file))
    retrain = {st.stage: st for st in cost.shapes[0].stages}["retrain"]
    m = re.fullmatch(r"(\d+) ep x (\d+) steps x ([\d.]+) ms \+ ([\d.]+) s start", retrain.basis)
    assert m, retrain.basis
    epochs, steps, ms, start = int(m[1]), int(m[2]), float(m[3]), float(m[4])
    assert (epochs, steps) == (track.retrain.epochs, 1437 // track.retrain.batch_size) and ms > 0
    assert retrain.seconds == pytest.approx(epochs * steps * ms / 1e3 + start, rel=0.01, abs=0.06)
    ran = CliRunner().invoke(app, _sweep(tiny_track_file, out))  # the run itself
    assert ran.exit_code == 0, ran.output
    [record] = Store.load(out).records.values()
    assert record.timing.retrain_s > 0 and record.timing.step_s > 0

    again = CliRunner().invoke(app, _sweep(tiny_track_file, out, "--dry-run"))
    assert again.exit_code == 0 and "for 0 runs (1 already recorded, not counted)" in again.output
