"""The docker runner under the real Docker Engine: same results as the subprocess runner, a
sandbox that stops hostile images every time, and `submit` bundles."""

from __future__ import annotations

import json
import os
import re
import shutil

import pytest
import torch
from typer.testing import CliRunner

from conftest import REPO

docker = pytest.importorskip("docker")


def _engine():
    try:
        client = docker.from_env(timeout=30)
        client.ping()
        return client
    except Exception as e:  # noqa: BLE001
        return e


ENGINE = _engine()
if isinstance(ENGINE, Exception):
    if os.environ.get("CI"):
        raise RuntimeError(f"CI must provide a Docker Engine (make docker): {ENGINE}")
    pytest.skip(f"no Docker Engine reachable ({type(ENGINE).__name__}); run `make docker`", allow_module_level=True)

pytestmark = [pytest.mark.docker, pytest.mark.serial]  # counts every method container on the engine

from harness.cli import app  # noqa: E402
from harness.methods import find_method, load_source  # noqa: E402
from harness.protocol.run import RunSpec, evaluate  # noqa: E402
from harness.orchestration.submission import build_image  # noqa: E402
from specs.submission import Submission  # noqa: E402

HOSTILE = REPO / "tests" / "fixtures" / "hostile_method"


@pytest.fixture(scope="module")
def images():
    return {name: build_image(src) for name, src in
            (("magnitude_l2", find_method("magnitude_l2")), ("hostile", load_source(HOSTILE)))}


def _leftover_containers():
    return ENGINE.containers.list(all=True, filters={"label": "pbench.role=method"})


def test_docker_runner_gives_the_subprocess_result(images, tiny_track, tmp_path):
    src = find_method("magnitude_l2")
    a, _ = evaluate(RunSpec(track=tiny_track, method=src, speedup=2, seed=0, runner="docker", out=tmp_path / "d"))
    b, _ = evaluate(RunSpec(track=tiny_track, method=src, speedup=2, seed=0, runner="subprocess", out=tmp_path / "s"))
    assert a.status == b.status == "ok", (a.error, b.error)
    assert a.layer_channels == b.layer_channels and a.metric == b.metric and a.macs == b.macs
    assert a.method.runner == "docker" and re.fullmatch(r"sha256:[0-9a-f]{64}", a.method.image_digest)
    assert a.method.image_digest == ENGINE.images.get(images["magnitude_l2"]).id
    assert not _leftover_containers()


HOSTILE_CASES = {
    "network": r"network blocked: .*unreachable",
    "read_host": r"FileNotFoundError: .*README.md",
    "write_outside": r"OSError: \[Errno 30\] Read-only file system",
    "memory": r"killed: out of memory \(limit 512 MB\)",
    # fork_bomb: tests/test_sandbox_escapes.py (its own image, the host measured)
    "sleep": r"did not answer 'score' within 3 s \(killed\)",
    "garbage": r"protocol error: message is not valid JSON",
    "nan": r"NaN or infinite",
    "huge_file": r"has 1073741824 bytes, more than the \d+ allowed",
    "privilege": r"PermissionError: \[Errno 1\] Operation not permitted",
}


@pytest.mark.parametrize("mode", sorted(HOSTILE_CASES))
def test_hostile_image_is_stopped_and_the_harness_carries_on(mode, images, tiny_track, tmp_path):
    hp = {"mode": mode, "target": str(REPO / "README.md")}
    spec = RunSpec(track=tiny_track, method=load_source(HOSTILE), speedup=2, seed=0, runner="docker",
                   out=tmp_path, hyperparameters=hp, call_timeout=3)
    record, run_dir = evaluate(spec)
    assert record.status == "failed", f"the sandbox let {mode!r} through"
    assert re.search(HOSTILE_CASES[mode], record.error), record.error
    assert sorted(p.name for p in run_dir.iterdir()) == ["result.json"]
    assert not _leftover_containers()
    assert not (REPO / "evil").exists()


def test_submit_the_template_writes_a_bundle(tiny_track_file, tmp_path):
    runner = CliRunner()
    assert runner.invoke(app, ["new-method", "tmpl_sub", "--dest", str(tmp_path)]).exit_code == 0
    res = runner.invoke(app, ["submit", str(tmp_path / "tmpl_sub"), "--out", str(tmp_path / "subs"),
                              "--smoke-track", str(tiny_track_file)])
    assert res.exit_code == 0, res.output
    bundle = tmp_path / "subs" / "tmpl_sub-0.1.0"
    sub = Submission.model_validate_json((bundle / "submission.json").read_text())
    assert sub.conformance.passed and sub.conformance.runner == "docker" and sub.smoke.status == "ok"
    assert sub.smoke.method.image_digest == sub.image.digest == ENGINE.images.get("pbench/method-tmpl_sub:0.1.0").id
    import hashlib
    assert hashlib.sha256((bundle / "image.tar").read_bytes()).hexdigest() == sub.image.archive_sha256
    assert sorted(p.name for p in bundle.iterdir()) == ["image.tar", "submission.json"]


@pytest.mark.parametrize("breakage, message", [
    ("manifest", "invalid manifest: version"),
    ("shape", "conformance failed: replies: group"),
    ("nondeterministic", "conformance failed: determinism"),
])
def test_submit_a_broken_method_fails_with_the_reason(breakage, message, tiny_track_file, tmp_path):
    d = tmp_path / "broken_sub"
    shutil.copytree(REPO / "method_template", d)
    manifest = json.loads((d / "manifest.json").read_text())
    manifest["id"] = "broken_sub"
    if breakage == "manifest":
        del manifest["version"]
    (d / "manifest.json").write_text(json.dumps(manifest))
    head = "import time, torch\nfrom specs.sdk import ImportanceMethod\n\nclass Method(ImportanceMethod):\n" \
           "    def score_group(self, group, obs):\n"
    if breakage == "shape":
        (d / "method.py").write_text(head + "        return torch.ones(group.n_channels + 2)\n")
    if breakage == "nondeterministic":
        (d / "method.py").write_text(head + "        g = torch.Generator().manual_seed(time.time_ns())\n"
                                            "        return torch.rand(group.n_channels, generator=g)\n")
    res = CliRunner().invoke(app, ["submit", str(d), "--out", str(tmp_path / "subs"),
                                   "--smoke-track", str(tiny_track_file)])
    assert res.exit_code == 2, res.output
    assert message in " ".join(res.output.split()), res.output
    assert "Traceback" not in res.output
    assert not (tmp_path / "subs").exists() or not any((tmp_path / "subs").iterdir())


def test_a_spare_container_is_taken_by_the_next_client_and_none_is_left(images):
    """A sweep's spare (:mod:`harness.runners.spares`) under docker: the container started ahead serves the
    next run's client (its own seed), a spare of another image is not taken, and no container outlives it."""
    from harness.runners import spares
    from harness.runners.docker_runner import DockerClient
    from harness.runners.socket_client import MALLOC_ENV
    from specs.messages import Group, Member
    src = find_method("magnitude_l2")
    with spares.expecting(lambda: DockerClient(src, {}, 0)):
        spares.stock()
    spare = spares.current()
    try:
        assert spare is not None and spare.connected(60)
        # (its malloc settings, as a subprocess method's: tests/test_prune_overhead.py)
        assert {f"{k}={v}" for k, v in MALLOC_ENV.items()} <= set(spare._container.attrs["Config"]["Env"])
        other = DockerClient(src, {}, 0, image=images["hostile"])
        assert spares.take(other) is other
        other.close()
        client = spares.take(DockerClient(src, {"p": 1}, 5))
        assert client is spare and (client.seed, client.hyperparameters["p"]) == (5, 1)
        group = Group(id="g", root="fc", n_channels=2, members=[Member(
            layer="fc", module_type="Linear", kind="linear", dim="out", idxs=[0, 1], root_idxs=[0, 1],
            weight="fc.weight")])
        with client.begin():
            scores = client.score(0, [group], {"weights": {"fc.weight": torch.tensor([[1.0, -1.0], [3.0, 0.0]])}})
        assert scores["g"].tolist() == pytest.approx([2 / 2.5, 3 / 2.5])  # p=1 sums |w|, mean-normalized
    finally:
        spares.discard()
    assert not _leftover_containers()


KILLED_HARNESS = """
import sys, time, torch
from harness.methods import load_source
from harness.runners.docker_runner import DockerClient
from specs.messages import Group, Member
client = DockerClient(load_source(sys.argv[1]), {"mode": "sleep"}, 0, call_timeout=600)
group = Group(id="g", root="fc", n_channels=2, members=[Member(layer="fc", module_type="Linear", kind="linear",
              dim="out", idxs=[0, 1], root_idxs=[0, 1], weight="fc.weight")])
with client.begin():
    client.ready()
    print(client.exchange, client._container.id, flush=True)
    client.score(0, [group], {"weights": {"fc.weight": torch.ones(2, 3)}})  # the method sleeps in it
"""


def test_a_harness_killed_outright_leaves_a_container_that_ends_and_is_removed(images, tmp_path):
    """A sweep worker killed outright (the out-of-memory killer) cannot remove its method's container nor its
    exchange folder. The method, sleeping in a call, ends at once as the harness's end of the socket closes (it
    used to compute on for as long as its call timeout), and ``remove_stale`` (what a sweep calls as it starts, and
    when a worker died) removes the exited container, found by its owner label (this host, a pid gone), and the
    folders, named by that pid."""
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    from harness.runners.docker_runner import DockerClient

    script = tmp_path / "killed_harness.py"
    script.write_text(KILLED_HARNESS)
    proc = subprocess.Popen([sys.executable, str(script), str(HOSTILE)], stdout=subprocess.PIPE, text=True,
                            cwd=REPO)
    try:
        exchange, container_id = proc.stdout.readline().split()
        container = ENGINE.containers.get(container_id)
        time.sleep(2)  # (the score request is sent and the method sleeps in it)
        container.reload()
        assert container.status == "running"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert container.wait(timeout=20)["StatusCode"] == 0  # it ended by itself, within seconds
        assert DockerClient.remove_stale() >= 2 and not Path(exchange).exists()
        assert container_id not in {c.id for c in _leftover_containers()}
    finally:
        proc.kill()
        for c in _leftover_containers():
            if c.id == container_id:
                c.remove(force=True)
