"""One run over N processes (torch.distributed, gloo on CPU, 2 processes).

- the loop's data parallelism: 2 processes with DDP train a batch-norm-free net to the weights one
  process gets with the same global batch (same samples, same crops), a regularizer is asked once per
  step (by rank 0) and every rank adds its answer, a failure on rank 0 reaches every rank, the sharded
  evaluation counts every test image once;
- ``torchrun --nproc_per_node=2 pbench-harness evaluate``: exactly one ``ok`` record (world size,
  backend), the same pruned architecture as a one-process run of the same global batch, the final
  metric within 3 points (the processes differ only in batch-norm statistics: each normalizes its
  half of the batch);
- a rank killed mid-run gives one ``failed`` record and no hang; a Slurm-style supervised launch
  (``evaluate_distributed``) records the run too.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from harness.store import Store, find_records

from conftest import REPO, TINY_TRACK

pytestmark = pytest.mark.slow
PBENCH = Path(sys.executable).with_name("pbench-harness")
TORCHRUN = Path(sys.executable).with_name("torchrun")

# the tiny test track, with its own id and pretraining (trained here under DDP) and a retrain length to set
DDP_TRACK = TINY_TRACK.replace("id: tiny-digits", "id: ddp-digits").replace("pretrain: {epochs: 4", "pretrain: {epochs: 2") \
    .replace("retrain: {epochs: 1,", "retrain: {epochs: RETRAIN,")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _NoBN(nn.Module):
    """Conv net without batch norm: data parallelism must reproduce one process exactly (up to rounding)."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        x = torch.relu(self.conv2(torch.relu(self.conv1(x))))
        return self.fc(x.mean((2, 3)))


def _data():
    from harness.data import load_dataset
    return load_dataset("digits")


def _recipe():
    from specs.track import Recipe
    return Recipe(epochs=1, batch_size=64, lr=0.05, schedule="cosine", augmentation="crop_flip")


def _trained(hook_link=None):
    """(model after one epoch, link calls) in this process (``hook_link``: a regularizer link or None)."""
    from harness.protocol import distributed
    from harness.protocol.grouping import PruneConfig, describe_groups
    from harness.protocol.sparsify import make_grad_hook
    from harness.protocol.train import train_bundle
    torch.manual_seed(0)
    model, data = _NoBN(), _data()
    hook = None
    if hook_link is not None:
        groups = describe_groups(model, torch.randn(1, 1, 8, 8), PruneConfig(ignored_layers=[model.fc]))
        hook = make_grad_hook(model, groups, distributed.shared(hook_link(groups)))
    return train_bundle(model, data, _recipe(), seed=0, grad_hook=hook)


def _counting_link(calls: list):
    """A real regularizer (group_norm, in-process runner) behind a link that counts its calls."""
    from harness.methods import find_method
    from harness.runners import client_class
    client = client_class("inprocess")(find_method("group_norm"), {}, seed=0)
    client.start()

    def make(groups):
        link = client.regularizer_link(groups)

        def counted(step, total, weights):
            calls.append(step)
            return link(step, total, weights)
        return counted
    return make


def _worker(rank: int, port: int, out: str) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", LOCAL_WORLD_SIZE="2",
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    from harness.errors import MethodFailure
    from harness.protocol import distributed
    from harness.protocol.train import evaluate_top1
    w = distributed.init("cpu")
    result = {"world": [w.rank, w.size, w.backend]}
    plain = _trained()
    result["plain"] = {k: v.tolist() for k, v in plain.state_dict().items()}
    calls: list = []
    reg = _trained(_counting_link(calls) if w.main else (lambda groups: None))
    result["reg"] = {k: v.tolist() for k, v in reg.state_dict().items()}
    result["calls"] = len(calls)
    result["top1"] = evaluate_top1(plain, _data().test)
    try:
        distributed.on_main(lambda: (_ for _ in ()).throw(MethodFailure("scores for an unknown group")))
    except MethodFailure as e:
        result["error"] = [type(e).__name__, str(e), distributed.everywhere(e)]
    Path(out, f"rank{rank}.json").write_text(json.dumps(result))
    # (a spawned process ends with os._exit, without the atexit that leaves the group: a rank that ended first
    # closed its peer's connections under gloo's threads, which aborted it, 2 times in about 15)
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


def test_data_parallel_training_is_the_one_process_training(tmp_path):
    torch.multiprocessing.spawn(_worker, args=(_free_port(), str(tmp_path)), nprocs=2, join=True)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world"] for r in ranks] == [[0, 2, "gloo"], [1, 2, "gloo"]]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        plain = _trained()
        calls: list = []
        reg = _trained(_counting_link(calls))
        top1 = __import__("harness.protocol.train", fromlist=["x"]).evaluate_top1(plain, _data().test)
    finally:
        torch.set_num_threads(threads)
    steps = len(_data().train) // 64
    for name, model in (("plain", plain), ("reg", reg)):
        for key, value in model.state_dict().items():
            for r in ranks:  # every rank holds the one-process weights (gradients averaged over the halves)
                assert torch.allclose(torch.tensor(r[name][key]), value, atol=1e-5), (name, key)
    assert calls == list(range(steps))  # one process: once per step
    assert [r["calls"] for r in ranks] == [steps, 0]  # two processes: rank 0 asks once per step, rank 1 never
    assert ranks[0]["top1"] == ranks[1]["top1"] == pytest.approx(top1)  # every test image counted once
    assert [r["error"] for r in ranks] == [["MethodFailure", "scores for an unknown group", True]] * 2


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    """One checkpoint cache for these runs: the base is trained once, by the first (torchrun) run."""
    return tmp_path_factory.mktemp("ddp-cache")


def _track(tmp_path: Path, retrain_epochs: int) -> Path:
    path = tmp_path / "ddp-digits.yaml"
    path.write_text(DDP_TRACK.replace("RETRAIN", str(retrain_epochs)))
    return path


def _env(cache: Path) -> dict:
    return {**os.environ, "PBENCH_CACHE": str(cache), "PBENCH_NO_PROGRESS": "1", "OMP_NUM_THREADS": "1",
            "PYTHONPATH": str(REPO)}


def _evaluate(track: Path, out: Path, nproc: int = 1) -> list[str]:
    args = ["evaluate", "--method", "magnitude_l2", "--track", str(track), "--speedup", "2", "--out", str(out),
            "--runner", "inprocess", "--threads", "1"]
    if nproc == 1:
        return [str(PBENCH), *args]
    return [str(TORCHRUN), "--standalone", f"--nproc_per_node={nproc}", "--monitor-interval=0.5", str(PBENCH), *args]


def test_torchrun_run_writes_one_record_with_the_one_process_architecture(tmp_path, cache):
    track = _track(tmp_path, 2)
    t0 = time.monotonic()
    ddp = subprocess.run(_evaluate(track, tmp_path / "ddp", 2), env=_env(cache), capture_output=True, text=True,
                         timeout=600, cwd=tmp_path)
    ddp_s = time.monotonic() - t0
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    assert ddp.stdout.count("magnitude_l2 2x seed 0") == 1, ddp.stdout  # rank 0 alone reports
    one = subprocess.run(_evaluate(track, tmp_path / "one"), env=_env(cache), capture_output=True, text=True,
                         timeout=600, cwd=tmp_path)  # the same (DDP-trained, cached) base checkpoint
    assert one.returncode == 0, one.stderr[-3000:]
    assert len(find_records(tmp_path / "ddp")) == 1
    (a,), (b,) = Store.load(tmp_path / "ddp").records.values(), Store.load(tmp_path / "one").records.values()
    assert a.status == b.status == "ok" and a.run_key == b.run_key
    assert (a.provenance.world_size, a.provenance.backend) == (2, "gloo")
    assert (b.provenance.world_size, b.provenance.backend) == (1, None)
    assert a.provenance.training["retrain"].world_size == 2 and a.provenance.training["retrain"].data == "in_memory"
    assert a.provenance.checkpoint_sha256 == b.provenance.checkpoint_sha256
    assert a.layer_channels == b.layer_channels and a.macs == b.macs  # pruned once, on rank 0, from the same base
    assert a.metric.base == b.metric.base and a.metric.pruned == b.metric.pruned
    assert abs(a.metric.final - b.metric.final) <= 3.0, (a.metric.final, b.metric.final)
    print(f"torchrun x2: {ddp_s:.1f} s; final top-1 {a.metric.final:.2f} (2 processes) vs {b.metric.final:.2f} (1)")
    assert not [p for p in (tmp_path / "ddp").rglob(".*") if p.is_dir()]  # no staging or rank notes left


def _children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def _rank_of(pid: int) -> int | None:
    try:
        env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return None
    ranks = [e.split(b"=", 1)[1] for e in env if e.startswith(b"RANK=")]
    return int(ranks[0]) if ranks else None


def test_a_killed_rank_gives_one_failed_record_not_a_hang(tmp_path, cache):
    track, out = _track(tmp_path, 400), tmp_path / "out"  # retraining long enough to be killed in
    proc = subprocess.Popen(_evaluate(track, out, 2), env=_env(cache), cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 400
        while not list((out / "ddp-digits").glob(".staging-*/pruned.pt")):  # pruned: retraining has begun
            assert proc.poll() is None and time.monotonic() < deadline, "the run ended before retraining"
            time.sleep(0.2)
        victim = [p for p in _children(proc.pid) if _rank_of(p) == 1]
        assert victim, "rank 1 not found among torchrun's workers"
        os.kill(victim[0], signal.SIGKILL)
        output, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode != 0
    records = list(Store.load(out).records.values())
    assert len(records) == 1 and records[0].status == "failed", output[-3000:]
    assert records[0].error.startswith("distributed run failed"), records[0].error
    print(f"killed rank 1: {records[0].error}")
    assert records[0].provenance.world_size == 2
    assert not [p for p in out.rglob(".*") if p.is_dir()]  # no staging left behind


def test_supervised_launch_records_the_run(tmp_path, cache, monkeypatch):
    """What a Slurm job with ``processes_per_job: 2`` runs (``cluster.run_job(..., processes=2)``)."""
    from harness.methods import find_method
    from harness.orchestration.cluster import run_job
    from harness.protocol.run import RunSpec
    from harness.tracks import load_track
    monkeypatch.setenv("PBENCH_CACHE", str(cache))
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    spec = RunSpec(track=load_track(str(_track(tmp_path, 1))), method=find_method("magnitude_l2"), speedup=2,
                   seed=0, runner="subprocess", out=tmp_path / "out", save_models=False, measure_latency=False)
    signals = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGUSR2)
    try:
        record = run_job(spec, processes=2)
    finally:
        signal.signal(signal.SIGTERM, signals[0])
        signal.signal(signal.SIGUSR2, signals[1])
    assert record.status == "ok", record.error
    assert (record.provenance.world_size, record.provenance.backend) == (2, "gloo")
    assert [r.run_key for r in Store.load(tmp_path / "out").records.values()] == [record.run_key]
