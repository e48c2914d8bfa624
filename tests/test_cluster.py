"""Slurm sweeps (``--executor slurm``) without a cluster: options validation, records for jobs that
left none, staging on shared file systems. The real cluster runs in tests/test_slurm.py."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from typer.testing import CliRunner

from harness.cli import app
from harness.orchestration.cluster import SlurmOptions, load_slurm_options
from harness.errors import HarnessError
from harness.methods import find_method
from harness.protocol.run import RunSpec, evaluate, record_unrun, run_key_of
from harness.store import run_dir_name
from harness.store import Store, clean_stale_staging, host_name, staging_prefix
from specs.result import JobInfo


def test_slurm_options_map_to_submitit_parameters(tmp_path):
    path = tmp_path / "slurm.yaml"
    path.write_text("partition: gpu\ngpus_per_job: 1\ncpus_per_job: 8\nmem_gb: 32\ntime_min: 240\n"
                    "array_parallelism: 4\nqos: high\nextra_sbatch: {exclusive: true, mail-type: END}\n"
                    "setup: ['module load cuda']\n")
    params = load_slurm_options(path).executor_parameters()
    assert params == {"timeout_min": 240, "cpus_per_task": 8, "mem_gb": 32, "nodes": 1, "tasks_per_node": 1,
                      "slurm_array_parallelism": 4, "slurm_signal_delay_s": 60, "slurm_job_name": "pbench", "slurm_setup": ["module load cuda"],
                      "gpus_per_node": 1, "slurm_partition": "gpu", "slurm_qos": "high",
                      "slurm_additional_parameters": {"exclusive": True, "mail_type": "END"}}
    assert load_slurm_options(None) == SlurmOptions()


def test_processes_per_job_follow_the_gpus_unless_given():
    assert SlurmOptions().processes == 1 and SlurmOptions(gpus_per_job=4).processes == 4
    assert SlurmOptions(gpus_per_job=4, processes_per_job=2).processes == 2
    assert SlurmOptions(processes_per_job=2).executor_parameters()["tasks_per_node"] == 1  # the job launches them


@pytest.mark.parametrize("text, message", [
    ("partiton: gpu\n", "partiton: Extra inputs are not permitted"),
    ("time_min: 0\n", "time_min: Input should be greater than or equal to 1"),
    ("extra_sbatch: {time: '1:00:00'}\n", "time must be set through the named options"),
    ("- a\n- b\n", "a Slurm options file must be a mapping"),
    ("partition: [gpu\n", "not valid YAML at line"),
])
def test_bad_slurm_options_are_one_line_errors(tmp_path, text, message):
    path = tmp_path / "slurm.yaml"
    path.write_text(text)
    with pytest.raises(HarnessError, match=message) as e:
        load_slurm_options(path)
    assert "\n" not in str(e.value)


def test_slurm_executor_bad_input_is_refused_before_anything_runs(tiny_track_file, tmp_path, monkeypatch):
    base = ["sweep", "--track", str(tiny_track_file), "--methods", "random", "--speedups", "2", "--seeds", "0",
            "--out", str(tmp_path / "out")]
    (tmp_path / "bad.yaml").write_text("cpus: 2\n")
    res = CliRunner().invoke(app, base + ["--slurm-config", str(tmp_path / "bad.yaml")])
    assert res.exit_code == 2 and "--slurm-config needs --executor slurm" in res.output
    res = CliRunner().invoke(app, base + ["--executor", "slurm", "--slurm-config", str(tmp_path / "bad.yaml")])
    assert res.exit_code == 2 and "invalid Slurm options: cpus: Extra inputs are not permitted" in res.output
    res = CliRunner().invoke(app, base + ["--executor", "slurm", "--device", "cuda"])  # no GPU here, fine on
    assert res.exit_code == 2 and "set gpus_per_job >= 1" in res.output              # Slurm: but ask for one
    (tmp_path / "gpu.yaml").write_text("gpus_per_job: 1\n")
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch here
    res = CliRunner().invoke(app, base + ["--executor", "slurm", "--device", "cuda", "--slurm-config",
                                          str(tmp_path / "gpu.yaml")])
    assert res.exit_code == 2 and "no `sbatch` on PATH" in res.output
    res = CliRunner().invoke(app, base + ["--executor", "slurm"])
    assert res.exit_code == 2 and "no `sbatch` on PATH" in res.output
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").rglob("result.json"))


def test_a_job_that_left_no_record_is_recorded_failed_and_retried(tiny_track, tmp_path):
    spec = RunSpec(track=tiny_track, method=find_method("random"), speedup=2, seed=0, runner="inprocess",
                   out=tmp_path, save_models=False)
    record, run_dir = record_unrun(spec, "Slurm job 7_1 ended TIMEOUT (re-run with --retry-failed)",
                                   JobInfo(job_id="7_1", state="TIMEOUT"))
    assert record.status == "failed" and record.job.state == "TIMEOUT" and record.run_key == run_key_of(spec)
    assert run_dir.name == run_dir_name(spec, record.run_key)
    assert Store.load(tmp_path).records[record.run_key].error.startswith("Slurm job 7_1 ended TIMEOUT")
    ok, _ = evaluate(spec)  # the re-run replaces it
    assert ok.status == "ok" and ok.job is None
    # a job that wrote its record and was cancelled afterwards keeps its record
    kept, _ = record_unrun(spec, "Slurm job 8 ended CANCELLED", JobInfo(job_id="8", state="CANCELLED"))
    assert kept == ok
    [only] = Store.load(tmp_path).records.values()
    assert only == ok and not list(tmp_path.rglob(".staging-*"))


def test_staging_is_cleaned_only_by_the_host_that_wrote_it(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    here = tmp_path / f".staging-{dead}@{host_name()}@run-a-x1"
    there = tmp_path / f".staging-{dead}@some-other-node@run-a-x2"
    old_style = tmp_path / f".staging-{dead}-run-b-x3"
    mine = tmp_path / (staging_prefix("run-c") + "x4")
    for d in (here, there, old_style, mine):
        d.mkdir()
    assert clean_stale_staging(tmp_path) == 2
    assert not here.exists() and not old_style.exists()
    assert there.exists(), "another node's pid means nothing here"
    assert mine.exists(), "this process is alive"
    assert clean_stale_staging(tmp_path, "run-a") == 1 and not there.exists()  # its job is known to be over
    assert mine.exists()
    assert str(os.getpid()) in mine.name


@pytest.mark.parametrize("signum, limit_s, state", [
    (signal.SIGTERM, 3600, "CANCELLED"),  # scancel (or preemption by cancel) long before the limit
    (signal.SIGUSR2, 3600, "PREEMPTED"),  # submitit's early warning long before the limit
    (signal.SIGUSR2, 60, "TIMEOUT"),      # ...or close to it (Slurm may warn up to 60 s early)
    (signal.SIGTERM, 60, "TIMEOUT"),
])
def test_a_stopped_job_knows_why(signum, limit_s, state):
    from harness.orchestration.cluster import JobStopped, _on_stop_signals
    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGUSR2)}
    try:
        _on_stop_signals(limit_s, delay_s=10)
        with pytest.raises(JobStopped) as stopped:
            os.kill(os.getpid(), signum)
            time.sleep(5)  # the handler interrupts this
        assert stopped.value.state == state
    finally:
        for s, handler in saved.items():
            signal.signal(s, handler)


def test_the_job_journal_merges_concurrent_drivers(tmp_path):
    from harness.orchestration.cluster import Journal
    a, b = Journal(tmp_path), Journal(tmp_path)  # two sweeps into one store
    a.add("k1", "10_0", tmp_path / "f1")
    b.add("k2", "11_0", tmp_path / "f2")
    a.save()
    b.save()
    assert Journal(tmp_path).entries == {"k1": {"job_id": "10_0", "folder": str(tmp_path / "f1")},
                                         "k2": {"job_id": "11_0", "folder": str(tmp_path / "f2")}}
