"""benchmarks/gpu_check.sh refuses cleanly without CUDA (its figures are "unmeasured" then), and its
Python part runs end to end on the CPU at toy sizes; the published step times it compares against are
PruningBench's."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import REPO

SCRIPT = REPO / "benchmarks" / "gpu_check.sh"


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU: the check would run")
def test_the_script_refuses_without_cuda():
    res = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHON": sys.executable})
    assert res.returncode == 3, res.stderr
    assert "no CUDA device here" in res.stderr and "nothing measured" in res.stderr and not res.stdout


def _gpu_check():
    import importlib.util
    spec = importlib.util.spec_from_file_location("gpu_check", REPO / "benchmarks" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_published_step_times_are_pruningbenchs():
    table = REPO.parent / "shared" / "reference" / "pruningbench_leaderboards.csv"
    if not table.exists():
        pytest.skip(f"{table} is not here")
    names = {"magnitude_l2": "MagnitudeL2", "taylor": "Taylor", "hrank": "HRank"}
    with open(table) as f:
        rows = [r for r in csv.DictReader(f) if (r["model"], r["dataset"], r["regularizer"]) ==
                ("Resnet18", "CIFAR100", "N/A")]
    for ours, theirs in names.items():
        times = {r["step_time"] for r in rows if r["importance"] == theirs}
        assert len(times) == 1  # the same at every speedup: a time per step
        text = times.pop()
        seconds = (float(text.split("m")[0]) * 60 if "m" in text else 0) + float(text.split("m")[-1].rstrip("s"))
        assert _gpu_check().PUBLISHED_STEP_S[ours] == pytest.approx(seconds)


@pytest.mark.slow
def test_the_check_runs_end_to_end_on_the_cpu(tmp_path):
    out = tmp_path / "gpu.json"
    res = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), "--device", "cpu",
                          "--allow-cpu", "--steps", "2", "--repeats", "1", "--rounds", "2", "--calibration", "32",
                          "--width", "0.125", "--methods", "magnitude_l2,taylor,hrank", "--json", str(out)],
                         capture_output=True, text=True, timeout=900, cwd=REPO,
                         env={**os.environ, "PYTHONPATH": str(REPO), "PBENCH_NO_PROGRESS": "1"})
    assert res.returncode == 0, res.stderr[-3000:]
    figures = json.loads(out.read_text())
    assert figures["retrain"]["harness"] > 0 and figures["retrain"]["minimal"] > 0
    for method in ("magnitude_l2", "taylor", "hrank"):
        row = figures["prune"][method]
        assert row["one_shot"]["speedup"] >= 2 and row["rounds_2"]["speedup"] >= 2
        assert row["rounds_2"]["per_round_s"] > 0
    assert "ratio harness / minimal" in res.stdout and "PruningBench" in res.stdout
