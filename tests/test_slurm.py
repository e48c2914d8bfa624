"""Sweeps on a real single-node Slurm cluster (slurmctld, slurmd, slurmdbd + MariaDB from Debian's
packages, started by .ci/slurm-cluster.sh and stopped by PID at the end).

- a sweep through ``--executor slurm`` gives exactly the records of a local sweep;
- a driver killed mid-sweep re-attaches to the running job; a cancelled job and a timed-out job are
  recorded as failed with their Slurm state, and ``--retry-failed`` submits them again.

Skipped where the cluster cannot be set up (not root, no apt), except in CI."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from harness.cli import app
from harness.store import Store, find_records

from conftest import REPO

pytestmark = pytest.mark.slow
SCRIPT = REPO / ".ci" / "slurm-cluster.sh"


def _unavailable(reason: str):
    if os.environ.get("CI"):
        pytest.fail(f"Slurm cluster unavailable in CI: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def slurm():
    if os.geteuid() != 0:
        _unavailable("starting Slurm daemons needs root")
    if not (Path("/usr/sbin/slurmctld").exists() or Path("/usr/bin/apt-get").exists()):
        _unavailable("no Slurm and no apt-get to install it")
    # a short path: the cluster's Unix sockets live under it (108-byte limit), whatever pytest's basetemp is
    state = Path(tempfile.mkdtemp(prefix="pbench-slurm-", dir="/tmp"))
    res = subprocess.run(["bash", str(SCRIPT), "start", str(state)], capture_output=True, text=True, timeout=900)
    if res.returncode != 0:
        _unavailable(f"slurm-cluster.sh start failed: {res.stderr.strip()[-2000:]}")
    conf = res.stdout.strip().splitlines()[-1].split("=", 1)[1].strip().strip("'\"")
    old = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = conf
    try:
        yield state
    finally:
        stop = subprocess.run(["bash", str(SCRIPT), "stop", str(state)], capture_output=True, text=True, timeout=300)
        if old is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = old
        assert stop.returncode == 0, stop.stderr
        alive = [p for p in state.rglob("*.pid") if _alive(p)]
        assert not alive, f"daemons still running: {alive}"
        shutil.rmtree(state, ignore_errors=True)


def _alive(pidfile: Path) -> bool:
    try:
        os.kill(int(pidfile.read_text().strip()), 0)
    except (ValueError, ProcessLookupError, OSError):
        return False
    return True


def _options(tmp_path, **extra) -> Path:
    opts = {"cpus_per_job": 1, "mem_gb": 1, "time_min": 10, "array_parallelism": 2, "poll_s": 1, **extra}
    path = tmp_path / "slurm.yaml"
    path.write_text("".join(f"{k}: {v}\n" for k, v in opts.items()))
    return path


def _sweep(track, out, methods, *extra):
    return ["sweep", "--track", str(track), "--methods", methods, "--speedups", "2", "--seeds", "0",
            "--out", str(out), "--no-models", *extra]


def test_slurm_sweep_gives_the_local_sweeps_records(slurm, tiny_track_file, tmp_path):
    threads = torch.get_num_threads()
    try:  # one torch thread in both, so that the two are bitwise comparable
        local = CliRunner().invoke(app, _sweep(tiny_track_file, tmp_path / "local", "magnitude_l1,random",
                                               "--threads", "1"))
    finally:
        torch.set_num_threads(threads)
    t0 = time.monotonic()
    remote = CliRunner().invoke(app, _sweep(tiny_track_file, tmp_path / "slurm", "magnitude_l1,random",
                                            "--executor", "slurm", "--slurm-config", str(_options(tmp_path))))
    print(f"slurm sweep of 2 runs: {time.monotonic() - t0:.1f} s")
    assert local.exit_code == 0, local.output
    assert remote.exit_code == 0, remote.output
    a, b = Store.load(tmp_path / "local").records, Store.load(tmp_path / "slurm").records
    assert len(a) == 2 and a.keys() == b.keys()
    for key in a:
        x, y = a[key], b[key]
        assert y.status == "ok" and x.job is None
        assert y.job is not None and y.job.job_id.split("_")[0].isdigit() and y.job.node
        assert (x.metric, x.speedup, x.macs, x.params, x.layer_channels) == \
               (y.metric, y.speedup, y.macs, y.params, y.layer_channels)
    again = CliRunner().invoke(app, _sweep(tiny_track_file, tmp_path / "slurm", "magnitude_l1,random",
                                           "--executor", "slurm"))
    assert again.exit_code == 0 and "skipped 2" in again.output  # nothing submitted twice


def test_a_missing_base_is_trained_in_a_slurm_job_first(slurm, tiny_track_file, tmp_path):
    """Runs are keyed by the base's sha256: the driver gets a base it does not have trained by a job."""
    from harness.tasks import base_sha256
    from harness.tracks import load_track
    cache = tmp_path / "cache"
    res = CliRunner().invoke(app, _sweep(tiny_track_file, tmp_path / "out", "random", "--executor", "slurm",
                                         "--slurm-config", str(_options(tmp_path)), "--cache-dir", str(cache)))
    assert res.exit_code == 0, res.output
    assert "training the base checkpoint of tiny-digits in Slurm job" in res.output
    [record] = Store.load(tmp_path / "out").records.values()
    assert record.status == "ok" and record.job is not None
    digest = base_sha256(load_track(str(tiny_track_file)), cache_dir=cache, train=False)  # now in the cache
    assert record.provenance.checkpoint_sha256 == digest


def _squeue() -> dict[str, str]:
    res = subprocess.run(["squeue", "-h", "-o", "%i %T"], capture_output=True, text=True, check=True)
    return dict(line.split() for line in res.stdout.splitlines() if line.strip())


def _wait(what, predicate, timeout=180.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def _driver(args, log: Path) -> subprocess.Popen:
    with open(log, "w") as f:
        return subprocess.Popen([sys.executable, "-m", "harness.cli", *args], cwd=REPO, stdout=f,
                                stderr=subprocess.STDOUT, start_new_session=True, env={**os.environ})


def _sleepy(make_method, flag: Path):
    """A method that hangs while ``flag`` exists (its call deadline is far away)."""
    return make_method(f"import os, time, torch\nfrom specs.sdk import ImportanceMethod\n"
                       f"class Method(ImportanceMethod):\n    def score_group(self, g, o):\n"
                       f"        while os.path.exists({str(flag)!r}):\n            time.sleep(0.2)\n"
                       f"        return torch.arange(g.n_channels, dtype=torch.float32)\n",
                       id="sleepy", resources={"memory_mb": 512, "cpus": 1, "call_timeout_s": 3600})


def test_killed_driver_reattaches_cancelled_job_is_recorded_and_retried(slurm, make_method, tiny_track_file,
                                                                       tmp_path):
    flag = tmp_path / "hang"
    flag.touch()
    method = _sleepy(make_method, flag)
    out = tmp_path / "out"
    args = _sweep(tiny_track_file, out, str(method.path), "--executor", "slurm", "--slurm-config",
                  str(_options(tmp_path)))
    first = _driver(args, tmp_path / "first.log")
    job = _wait("the submission", lambda: re.search(r"as Slurm job array (\d+)", (tmp_path / "first.log").read_text()))
    job = job.group(1)
    _wait("the job to run", lambda: _squeue().get(job) == "RUNNING")
    time.sleep(3)  # the method is hanging inside its score call
    os.killpg(first.pid, signal.SIGKILL)  # the login session is lost; the job goes on
    first.wait()
    second = _driver(args, tmp_path / "second.log")
    _wait("the driver to attach", lambda: "attached to job" in (tmp_path / "second.log").read_text())
    assert [j for j, s in _squeue().items() if s in ("PENDING", "RUNNING")] == [job], "submitted twice"
    subprocess.run(["scancel", job], check=True)
    assert second.wait(timeout=180) == 1, (tmp_path / "second.log").read_text()
    [record] = Store.load(out).records.values()
    assert record.status == "failed" and record.job.state == "CANCELLED" and record.job.job_id == job
    assert f"Slurm job {job} ended CANCELLED" in record.error
    assert not list(out.rglob(".staging-*"))

    flag.unlink()
    res = CliRunner().invoke(app, args)  # recorded: not re-run by default...
    assert res.exit_code == 1 and "skipped 1" in res.output
    res = CliRunner().invoke(app, [*args, "--retry-failed"])  # ...but on demand
    assert res.exit_code == 0, res.output
    [record] = Store.load(out).records.values()
    assert record.status == "ok" and record.job.job_id != job and len(find_records(out)) == 1


def test_timed_out_job_is_recorded_as_timeout(slurm, make_method, tiny_track_file, tmp_path):
    flag = tmp_path / "hang"
    flag.touch()
    method = _sleepy(make_method, flag)
    out = tmp_path / "out"
    res = CliRunner().invoke(app, _sweep(tiny_track_file, out, str(method.path), "--executor", "slurm",
                                         "--slurm-config", str(_options(tmp_path, time_min=1))))
    assert res.exit_code == 1, res.output
    [record] = Store.load(out).records.values()
    assert record.status == "failed" and record.job.state == "TIMEOUT", record
    assert "ended TIMEOUT (re-run with --retry-failed)" in record.error


def test_a_job_runs_its_run_over_two_processes(slurm, tiny_track_file, tmp_path):
    """``processes_per_job: 2`` (on GPUs: ``gpus_per_job: 2``): the job launches 2 data-parallel processes
    (gloo here) and its run has one record."""
    out = tmp_path / "out"
    res = CliRunner().invoke(app, _sweep(tiny_track_file, out, "magnitude_l1", "--executor", "slurm",
                                         "--slurm-config", str(_options(tmp_path, processes_per_job=2,
                                                                        cpus_per_job=2))))
    assert res.exit_code == 0, res.output
    [record] = Store.load(out).records.values()
    assert record.status == "ok" and record.job is not None and len(find_records(out)) == 1
    assert (record.provenance.world_size, record.provenance.backend) == (2, "gloo")
