"""Hostile submissions against the docker sandbox: one image per attack (built FROM the method base,
one tiny layer each), each run through the docker runner (or blind-eval, for bundles), with its
expected status and reason; the next submission still runs, and a good one runs at the end.

While each attack runs, a sampler (every 50 ms, stopped with the attack) records the host's peak
disk growth (every disk file system holding the engine's data root, the temporary and exchange
directories and the result store), the peak growth of the host's used memory (tmpfs included), the
peak memory of the method containers (their cgroup) and the largest container log on disk. The
machine's other processes count too: the figures are upper bounds. Every attack is
bounded in time by a per-call deadline, a run deadline or a refusal before it starts.
``PBENCH_ESCAPES_REPORT=FILE`` writes the table (markdown) to FILE.

Needs a Docker Engine and the method base image (``make docker``); skipped without an engine,
except in CI (``CI`` set), where it fails instead.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import socket
import tarfile
import tempfile
import textwrap
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import pytest
from typer.testing import CliRunner

from conftest import REPO

docker = pytest.importorskip("docker")
try:
    ENGINE = docker.from_env(timeout=120)
    ENGINE.ping()
except Exception as e:  # noqa: BLE001
    if os.environ.get("CI"):
        raise RuntimeError(f"CI must provide a Docker Engine (make docker): {e}")
    pytest.skip(f"no Docker Engine reachable ({type(e).__name__}); run `make docker`", allow_module_level=True)

from harness.cli import app  # noqa: E402
from harness.methods import load_source  # noqa: E402
from harness.orchestration.blind import blind_eval  # noqa: E402
from harness.orchestration.submission import build_image  # noqa: E402
from harness.protocol.run import RunSpec, evaluate  # noqa: E402
from harness.runners.base import MethodClient  # noqa: E402
from harness.runners.docker_runner import BASE_IMAGE  # noqa: E402
from harness.runners.sandbox import fs_type  # noqa: E402
from harness.store import read_record  # noqa: E402
from specs.manifest import SandboxLimits  # noqa: E402
from specs.submission import CheckResult, ConformanceReport, ImageInfo, Submission  # noqa: E402

pytestmark = [pytest.mark.docker, pytest.mark.serial]  # watches the whole host: disk, containers

DOCKERFILE = "ARG BASE_IMAGE=pbench/method-base:1\nFROM ${BASE_IMAGE}\nCOPY --chown=method . /method\n"
HEAD = textwrap.dedent("""
    import errno, os, socket, sys, time
    import torch
    from specs.sdk import ImportanceMethod

    def ok(groups):  # what an attack answers if the sandbox let it through (the test then fails)
        return {g.id: torch.ones(g.n_channels) for g in groups}
    """)
DATA_ROOT = Path(tempfile.gettempdir()) / "pbench-hidden-data"  # made by the module fixture; never mounted


def gateway() -> str:
    """The host's default gateway (``/proc/net/route``); what a container would try to reach first."""
    for line in Path("/proc/net/route").read_text().splitlines()[1:]:
        f = line.split()
        if f[1] == "00000000" and f[2] != "00000000":
            return socket.inet_ntoa(int(f[2], 16).to_bytes(4, "little"))
    return "172.17.0.1"  # Docker's default bridge


@dataclass
class Attack:
    name: str
    code: str
    expect: str                      # regex on the record's error (or the refusal)
    stopped_by: str                  # for the table
    version: str = "1.3"
    resources: dict = field(default_factory=lambda: {"memory_mb": 512, "cpus": 1, "call_timeout_s": 20})
    hyperparameters: dict = field(default_factory=dict)
    sandbox: SandboxLimits = field(default_factory=SandboxLimits)
    run_timeout: Optional[float] = 60
    max_disk_mb: float = 200         # the host may grow at most this much (other processes included)


ATTACKS = [
    Attack("disk_fill_legacy", """
        class Method(ImportanceMethod):  # spec 1.0: replies are files, /exchange is writable (a host tmpfs)
            def score(self, groups, obs):
                for i in range(96):  # 3 GiB of incompressible data into the exchange directory
                    with open(f"/exchange/fill-{i}", "wb") as f:
                        f.write(os.urandom(32 * 2**20))
                return ok(groups)
        """, r"wrote more than 64 MB into its exchange directory \(\d+ MB by 'score', killed: out of memory",
           "write limit 64 MB (exchange on a host tmpfs charged to the 512 MB memory limit)", version="1.0",
           sandbox=SandboxLimits(max_write_mb=64)),
    Attack("disk_fill", """
        import specs.sdk.server as sdk
        from safetensors.torch import save
        class Method(ImportanceMethod):  # spec 1.3: /exchange is read-only, so the reply itself is the attack
            def score(self, groups, obs):
                try:
                    open("/exchange/fill", "wb").write(os.urandom(2**20))
                    return ok(groups)
                except OSError as e:
                    assert e.errno == errno.EROFS, e
                put = sdk._Reply.put
                def huge(self, name, tensors):
                    ref = put(self, name, tensors)
                    self.blobs[-1] = save({"fill": torch.zeros(48 * 2**20)})  # a 192 MB reply
                    return ref
                sdk._Reply.put = huge
                return ok(groups)
        """, r"wrote more than 64 MB: a reply of 192 MB to 'score' \(killed",
           "write limit 64 MB on the socket (read-only /exchange)", sandbox=SandboxLimits(max_write_mb=64),
           resources={"memory_mb": 1024, "cpus": 1, "call_timeout_s": 20}),
    Attack("log_flood", """
        class Method(ImportanceMethod):
            def score(self, groups, obs):
                line, n, t0 = "x" * (2**20 - 1), 0, time.monotonic()
                while n < 1024 and time.monotonic() - t0 < 6:  # up to 1 GiB of output
                    print(line, flush=True)
                    n += 1
                print(f"flooded {n} MB of logs", flush=True)
                os._exit(3)
        """, r"method process ended \(exit code 3\) during 'score': flooded \d+ MB of logs",
           "log limit 5 MB (json-file max-size)", sandbox=SandboxLimits(max_log_mb=5)),
    Attack("memory_bomb", """
        class Method(ImportanceMethod):
            def score(self, groups, obs):
                hog = []
                while True:
                    hog.append(torch.ones(64 * 2**20 // 4))
        """, r"killed: out of memory \(limit 512 MB\)", "memory 512 MB, no swap (under a 768 MB cap)",
           sandbox=SandboxLimits(max_memory_mb=768)),
    Attack("over_declared", """
        class Method(ImportanceMethod):
            def score(self, groups, obs):
                return ok(groups)
        """, r"resources: method 'attack_over_declared' asks for more than the organizers allow: memory_mb 262144 > "
             r"\d+ MB \(--max-memory-mb\); cpus 64 > \d+ \(--max-cpus\); call_timeout_s 86400 > 3600 s",
           "caps: half the host's memory, its cores, 3600 s", resources={"memory_mb": 262144, "cpus": 64,
                                                                         "call_timeout_s": 86400}),
    Attack("fork_bomb", """
        class Method(ImportanceMethod):
            def score(self, groups, obs):
                pids = []
                try:
                    while True:
                        pid = os.fork()
                        if pid == 0:
                            time.sleep(600)
                            os._exit(0)
                        pids.append(pid)
                except OSError as e:
                    raise RuntimeError(f"fork stopped after {len(pids)} processes: {e}") from None
        """, r"fork stopped after \d+ processes: \[Errno 11\] Resource temporarily unavailable"
             r"|out of memory \(limit 512 MB\)", "pids 256 (or memory 512 MB)"),
    Attack("network", f"""
        class Method(ImportanceMethod):
            def score(self, groups, obs):
                blocked = []
                try:
                    socket.getaddrinfo("pypi.org", 443)
                    return ok(groups)
                except OSError as e:
                    blocked.append(f"dns: {{e}}")
                for port in (53, 80, 443, 2375):
                    try:
                        socket.create_connection(("{gateway()}", port), timeout=2).close()
                        return ok(groups)
                    except OSError as e:
                        blocked.append(f"tcp {gateway()}:{{port}}: {{e.strerror}}")
                for path in ("/var/run/docker.sock", "/run/docker.sock"):
                    s = socket.socket(socket.AF_UNIX)
                    try:
                        s.connect(path)
                        return ok(groups)
                    except OSError as e:
                        blocked.append(f"{{path}}: {{e.strerror}}")
                raise RuntimeError("blocked: " + "; ".join(blocked))
        """, r"blocked: dns: .*; tcp [\d.]+:53: Network is unreachable; .*2375: Network is unreachable; "
             r"/var/run/docker.sock: No such file or directory; /run/docker.sock: No such file or directory",
           "network none, no Docker socket mounted"),
    Attack("write_outside", """
        class Method(ImportanceMethod):
            def score(self, groups, obs):
                refused = []
                for path in ("/method/x", "/opt/venv/x", "/x", "/exchange/x", "/etc/x", "/var/tmp/x", "/dev/shm/x",
                             "/run/x", "/home/x", "/proc/x"):
                    try:
                        open(path, "w").write("x")
                        return ok(groups)
                    except OSError as e:
                        refused.append(f"{path} {errno.errorcode[e.errno]}")
                open("/tmp/allowed", "w").write("scratch is fine")
                raise RuntimeError("refused: " + ", ".join(refused))
        """, r"refused: /method/x EROFS, /opt/venv/x EROFS, /x EROFS, /exchange/x EROFS, /etc/x EROFS, "
             r"/var/tmp/x EROFS, /dev/shm/x (ENOENT|EROFS|EACCES), /run/x EROFS, /home/x EROFS, /proc/x \w+",
           "read-only root and /exchange; tmpfs /tmp only"),
    Attack("read_data_root", f"""
        class Method(ImportanceMethod):
            def score(self, groups, obs):
                root = "{DATA_ROOT}"
                if root in open("/proc/self/mountinfo").read() or any(root in v for v in os.environ.values()):
                    return ok(groups)
                os.listdir(root)  # FileNotFoundError: never mounted
                return ok(groups)
        """, r"FileNotFoundError: \[Errno 2\] No such file or directory: '" + re.escape(str(DATA_ROOT)),
           "only /exchange mounted"),
    Attack("sleep_past_deadline", """
        class Method(ImportanceMethod):
            def score(self, groups, obs):
                time.sleep(600)
        """, r"method exceeded its run deadline of 12 s during 'score' \(killed\)", "run deadline 12 s",
           resources={"memory_mb": 512, "cpus": 1, "call_timeout_s": 300}, run_timeout=12),
]
GOOD = Attack("good", """
    class Method(ImportanceMethod):
        def score_group(self, group, obs):
            return torch.arange(group.n_channels, dtype=torch.float32)
    """, "", "")


# --------------------------------------------------------------------------- measuring


class Monitor:
    """Samples the host every ``period`` s between ``__enter__`` and ``__exit__``; keeps the peaks."""

    def __init__(self, paths: list[Path], period: float = 0.05):
        self.period = period
        self.devices = {}  # disks only: what lands on a tmpfs is memory, and counted as such
        for p in paths:
            try:
                if fs_type(p) != "tmpfs":
                    self.devices.setdefault(os.stat(p).st_dev, p)
            except OSError:
                pass
        root = Path(ENGINE.info()["DockerRootDir"])
        self.logs = root / "containers"
        self.cgroup = Path("/sys/fs/cgroup/memory/docker/memory.usage_in_bytes")
        self.peak = {"disk": 0.0, "memory": 0.0, "containers": 0.0, "logs": 0.0}
        self._stop = threading.Event()

    def _disk(self) -> float:
        total = 0
        for p in self.devices.values():
            st = os.statvfs(p)
            total += (st.f_blocks - st.f_bfree) * st.f_frsize
        return total

    @staticmethod
    def _memory() -> float:
        info = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines())
        kb = lambda k: int(info[k].split()[0]) * 1024  # noqa: E731
        return kb("MemTotal") - kb("MemAvailable")

    def _containers(self) -> float:
        try:
            return int(self.cgroup.read_text())
        except (OSError, ValueError):
            return 0.0

    def _log_bytes(self) -> float:
        """The largest container log on disk (the limit is per container)."""
        sizes = [0]
        for f in self.logs.glob("*/*-json.log*"):
            try:
                sizes.append(f.stat().st_size)
            except OSError:
                pass
        return max(sizes)

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            now = {"disk": self._disk() - self.base["disk"], "memory": self._memory() - self.base["memory"],
                   "containers": self._containers() - self.base["containers"], "logs": self._log_bytes()}
            for k, v in now.items():
                self.peak[k] = max(self.peak[k], v)

    def __enter__(self) -> "Monitor":
        self.base = {"disk": self._disk(), "memory": self._memory(), "containers": self._containers()}
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        self.t0 = time.monotonic()
        return self

    def __exit__(self, *exc) -> None:
        self.seconds = time.monotonic() - self.t0
        self._stop.set()
        self._thread.join(timeout=5)

    def mb(self, key: str) -> float:
        return self.peak[key] / 2**20


TABLE: list[dict] = []


@pytest.fixture(scope="module", autouse=True)
def report():
    yield
    if not TABLE:
        return
    lines = ["| attack | stopped by | status and reason | peak host disk growth | peak host memory growth "
             "(containers' cgroup) | largest container log | seconds to detection |",
             "|---|---|---|---|---|---|---|"]
    for r in TABLE:
        lines.append(f"| {r['name']} | {r['stopped_by']} | {r['status']}: {r['reason'][:160]} | {r['disk']:.0f} MB | "
                     f"{r['memory']:.0f} MB ({r['containers']:.0f} MB) | {r['logs']:.1f} MB | {r['detect']:.2f} |")
    text = "\n".join(lines) + "\n"
    print("\n" + text)
    if os.environ.get("PBENCH_ESCAPES_REPORT"):
        Path(os.environ["PBENCH_ESCAPES_REPORT"]).write_text(text)


@pytest.fixture
def score_times(monkeypatch):
    """Wall time of every score call (where the attacks run): start to answer, failure or kill."""
    times: list[float] = []
    score = MethodClient.score

    def timed(self, *args, **kwargs):
        t0 = time.monotonic()
        try:
            return score(self, *args, **kwargs)
        finally:
            times.append(time.monotonic() - t0)

    monkeypatch.setattr(MethodClient, "score", timed)
    return times


# --------------------------------------------------------------------------- images


def method_dir(root: Path, attack: Attack) -> Path:
    d = root / f"attack_{attack.name}"
    d.mkdir()
    (d / "Dockerfile").write_text(DOCKERFILE)
    (d / "method.py").write_text(HEAD + textwrap.dedent(attack.code))
    (d / "manifest.json").write_text(json.dumps({
        "spec_version": attack.version, "id": f"attack_{attack.name}", "version": "1.0.0",
        "name": f"Attack {attack.name}", "provides": ["importance"], "observations": ["weights"],
        "resources": attack.resources}))
    return d


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """One image per attack (and the good one), FROM the method base; removed afterwards."""
    try:
        ENGINE.images.get(BASE_IMAGE)
    except docker.errors.ImageNotFound:
        pytest.fail(f"{BASE_IMAGE} is missing: build it with `make docker`", pytrace=False)
    DATA_ROOT.mkdir(exist_ok=True)
    (DATA_ROOT / "test_batch").write_bytes(b"hidden labels")
    root = tmp_path_factory.mktemp("attacks")
    t0 = time.monotonic()
    sources = {}
    for attack in [*ATTACKS, GOOD]:
        src = load_source(method_dir(root, attack))
        build_image(src)
        sources[attack.name] = src
    print(f"\nbuilt {len(sources)} attack images in {time.monotonic() - t0:.1f} s")
    yield sources
    shutil.rmtree(DATA_ROOT, ignore_errors=True)
    for src in sources.values():
        try:
            ENGINE.images.remove(f"pbench/method-{src.manifest.id}:1.0.0", force=True)
        except docker.errors.APIError:
            pass


def leftovers() -> list:
    return ENGINE.containers.list(all=True, filters={"label": "pbench.role=method"})


@pytest.fixture
def exchange_roots(monkeypatch, tmp_path):
    """Private parents for the runs' exchange directories (the machine's /tmp is shared), to check that
    none is left behind: the temporary directory (read-only exchanges) and a tmpfs (older methods')."""
    disk = tmp_path / "tmp"
    disk.mkdir()
    shm = Path(tempfile.mkdtemp(prefix="pbench-escapes-", dir="/dev/shm"))
    monkeypatch.setattr(tempfile, "tempdir", str(disk))
    monkeypatch.setenv("PBENCH_EXCHANGE_TMPFS", str(shm))
    yield disk, shm
    shutil.rmtree(shm, ignore_errors=True)


def watched(out: Path) -> list[Path]:
    return [Path(ENGINE.info()["DockerRootDir"]), Path(tempfile.gettempdir()), out]


# --------------------------------------------------------------------------- the attacks


@pytest.mark.parametrize("attack", ATTACKS, ids=[a.name for a in ATTACKS])
def test_attack_is_stopped(attack, images, tiny_track, tiny_track_file, tmp_path, score_times, exchange_roots):
    spec = RunSpec(track=tiny_track, method=images[attack.name], speedup=2, seed=0, runner="docker",
                   out=tmp_path / "results", data_root=DATA_ROOT, sandbox=attack.sandbox, save_models=False,
                   measure_latency=False, run_timeout=attack.run_timeout)
    error, status = None, None
    with Monitor(watched(tmp_path)) as mon:
        if attack.name == "over_declared":  # refused before it runs: exit 2 with one line
            res = CliRunner().invoke(app, ["evaluate", "--method", str(images[attack.name].path), "--track",
                                           str(tiny_track_file), "--speedup", "2",
                                           "--runner", "docker", "--out", str(tmp_path / "results")])
            assert res.exit_code == 2, res.output
            status, error = "exit 2", " ".join(res.output.split()).removeprefix("error: ")
            assert not (tmp_path / "results").exists() or not any((tmp_path / "results").rglob("result.json"))
        else:
            record, run_dir = evaluate(spec)
            status, error = record.status, record.error
            assert record.status == "failed", f"the sandbox let {attack.name!r} through"
            assert sorted(p.name for p in run_dir.iterdir()) == ["result.json"]
            assert read_record(run_dir / "result.json") == record
    assert re.search(attack.expect, error), error
    assert "\n" not in error and "Traceback" not in error
    assert not leftovers(), "a method container outlived its run"
    assert not [p for root in exchange_roots for p in root.iterdir()], "an exchange directory was left behind"
    assert mon.mb("disk") < attack.max_disk_mb, f"the host disk grew by {mon.mb('disk'):.0f} MB"
    if attack.name == "log_flood":
        assert mon.mb("logs") <= 5 + 1, f"container logs reached {mon.mb('logs'):.1f} MB on disk"
    TABLE.append(dict(name=attack.name, stopped_by=attack.stopped_by, status=status, reason=error,
                      disk=mon.mb("disk"), memory=mon.mb("memory"), containers=mon.mb("containers"),
                      logs=mon.mb("logs"), detect=score_times[-1] if score_times else mon.seconds))


# --------------------------------------------------------------------------- bundles


def tag_map() -> dict[str, str]:
    return {tag: img.id for img in ENGINE.images.list() for tag in img.tags}


def _tiny_image(name: str) -> str:
    """A one-file image FROM scratch (a bundle that is rejected or cannot run needs no real method)."""
    context = io.BytesIO()
    with tarfile.open(fileobj=context, mode="w") as tar:
        for fname, data in (("Dockerfile", f"FROM scratch\nCOPY payload /payload\nLABEL pbench.test={name}\n"),
                            ("payload", f"{name}\n")):
            info = tarfile.TarInfo(fname)
            info.size = len(data.encode())
            tar.addfile(info, io.BytesIO(data.encode()))
    context.seek(0)
    image, _ = ENGINE.images.build(fileobj=context, custom_context=True, rm=True, network_mode="none")
    return image.id


def _retag_archive(src: Path, dest: Path, repo_tags: list[str], repositories: Optional[dict] = None) -> None:
    """What an attacker does to a saved bundle: rewrite manifest.json's RepoTags and ``repositories``
    (by default, the first of ``repo_tags``)."""
    if repositories is None:
        repo, _, tag = repo_tags[0].rpartition(":")
        repositories = {repo: {tag: "x"}}
    with tarfile.open(src) as tin, tarfile.open(dest, "w") as tout:
        for m in tin:
            data = tin.extractfile(m).read() if m.isreg() else None
            if m.name == "manifest.json":
                manifest = json.loads(data)
                manifest[0]["RepoTags"] = repo_tags
                data = json.dumps(manifest).encode()
            elif m.name == "repositories":
                data = json.dumps(repositories).encode()
            if data is not None:
                m.size = len(data)
            tout.addfile(m, io.BytesIO(data) if data is not None else None)


def _bundle(root: Path, name: str, manifest: dict, digest: str, archive: Optional[Path]) -> Path:
    """A submission bundle around ``archive`` (conformance and smoke records as `submit` writes them)."""
    import hashlib
    bundle = root / name
    bundle.mkdir(parents=True)
    if archive is not None:
        (bundle / "image.tar").write_bytes(archive.read_bytes())
    else:
        (bundle / "image.tar").write_bytes(b"never read")
    data = (bundle / "image.tar").read_bytes()
    smoke = read_record(next((REPO / "benchmarks" / "results").rglob("result.json")))
    sub = Submission(
        manifest=manifest, image=ImageInfo(tag=f"pbench/method-{manifest['id']}:{manifest['version']}", digest=digest,
                                           archive="image.tar", archive_sha256=hashlib.sha256(data).hexdigest(),
                                           size_bytes=len(data)),
        conformance=ConformanceReport(method_id=manifest["id"], method_version=manifest["version"], runner="docker",
                                      image_digest=digest, checks=[CheckResult(name="manifest", passed=True)],
                                      passed=True),
        smoke=smoke, harness_version="test", created_at="2026-12-01T00:00:00+00:00")
    (bundle / "submission.json").write_text(sub.model_dump_json())
    return bundle


def test_bundles_cannot_move_tags_or_overdeclare(images, tiny_track, tmp_path):
    """Tag-hijacking bundles (extra RepoTags, a forged `repositories`) and an over-declared one are rejected
    before they load or run; a clean bundle whose own tag is taken loads without moving it. A plain
    `docker load` of the hijacking archive does move the victim's tag (the control)."""
    victim_base = "pbench-victim/method-base:1"
    victim_ref = "pbench-victim/method-magnitude_l2:1.0.0"
    base_id = ENGINE.images.get(BASE_IMAGE).id
    ref_id = ENGINE.images.get(f"pbench/method-{images['good'].manifest.id}:1.0.0").id
    ENGINE.images.get(base_id).tag(*victim_base.split(":"))
    ENGINE.images.get(ref_id).tag(*victim_ref.split(":"))
    tiny = _tiny_image("hijack")
    manifest = {**images["good"].manifest.model_dump(mode="json"), "id": "hijack"}
    own = "pbench/method-hijack:1.0.0"
    try:
        ENGINE.images.get(tiny).tag("pbench/method-hijack", "1.0.0")
        saved = tmp_path / "saved.tar"
        with open(saved, "wb") as f:
            for chunk in ENGINE.images.get(tiny).save(named=own):
                f.write(chunk)
        ENGINE.images.remove(own)
        evil = tmp_path / "evil.tar"
        _retag_archive(saved, evil, [own, victim_base, victim_ref])
        forged = tmp_path / "forged.tar"
        _retag_archive(saved, forged, ["pbench/method-forged:1.0.0"],
                       repositories={"pbench-victim/method-base": {"1": "x"}})

        # the control: what `docker load` does with it
        with open(evil, "rb") as f:
            ENGINE.images.load(f)
        assert ENGINE.images.get(victim_base).id == tiny != base_id
        ENGINE.images.get(base_id).tag(*victim_base.split(":"))
        ENGINE.images.get(ref_id).tag(*victim_ref.split(":"))
        ENGINE.images.remove(own)

        subs = tmp_path / "subs"
        _bundle(subs, "hijack-1.0.0", manifest, tiny, evil)
        _bundle(subs, "forged-1.0.0", {**manifest, "id": "forged"}, tiny, forged)
        _bundle(subs, "greedy-1.0.0", {**manifest, "id": "greedy", "resources": {
            "memory_mb": 262144, "cpus": 64, "call_timeout_s": 86400}}, tiny, None)
        # clean, but its own tag already names another image (say, a reference method's): not moved
        ENGINE.images.get(ref_id).tag("pbench/method-squatter", "1.0.0")
        squat = tmp_path / "squat.tar"
        _retag_archive(saved, squat, ["pbench/method-squatter:1.0.0"])
        _bundle(subs, "squatter-1.0.0", {**manifest, "id": "squatter"}, tiny, squat)
        before = tag_map()
        said: list[tuple[float, str]] = []
        with Monitor(watched(tmp_path)) as mon:
            results = {r.bundle: r.status for r in blind_eval(subs, tiny_track, tmp_path / "blind", speedups=[2],
                                                                seeds=[0], call_timeout=5, run_timeout=20,
                                                                say=lambda m: said.append((time.monotonic(), m)))}
        said.append((mon.t0 + mon.seconds, "end"))
        started = [(t, m.split(":")[0]) for t, m in said if m.endswith(": verifying")]
        ends = [t for t, m in said[1:] if m.endswith(": verifying") or m == "end"]
        detect = {name: end - t for (t, name), end in zip(started, ends)}
        after = tag_map()
        assert after == before, {t: (before.get(t), after.get(t)) for t in set(before) | set(after)
                                 if before.get(t) != after.get(t)}
        assert results["hijack-1.0.0"] == (f"rejected: image archive carries other tags: {victim_base}, {victim_ref} "
                                           f"(a bundle may name only its own, {own})")
        assert results["forged-1.0.0"] == ("rejected: image archive carries other tags: pbench-victim/method-base:1 "
                                           "(a bundle may name only its own, pbench/method-forged:1.0.0)")
        assert results["greedy-1.0.0"].startswith("rejected: resources: method 'greedy' asks for more than the "
                                                  "organizers allow: memory_mb 262144 > ")
        # loaded (by digest) without its tag; a one-file image cannot serve
        assert results["squatter-1.0.0"].startswith("failed: the image cannot start: "), results["squatter-1.0.0"]
        assert not leftovers()
        assert ENGINE.images.get("pbench/method-squatter:1.0.0").id == ref_id
        for name, stopped_by in (("hijack-1.0.0", "archive inspection (RepoTags)"),
                                 ("forged-1.0.0", "archive inspection (repositories)"),
                                 ("greedy-1.0.0", "caps (before the archive is read)"),
                                 ("squatter-1.0.0", "untagged load (own tag held elsewhere: not moved)")):
            TABLE.append(dict(name=f"bundle {name}", stopped_by=stopped_by, status="blind-eval",
                              reason=results[name], disk=mon.mb("disk"), memory=mon.mb("memory"),
                              containers=mon.mb("containers"), logs=mon.mb("logs"), detect=detect[name]))
    finally:
        for t in (victim_base, victim_ref, "pbench/method-squatter:1.0.0", own):
            try:
                ENGINE.images.remove(t)
            except docker.errors.APIError:
                pass
        try:
            ENGINE.images.remove(tiny, force=True)
        except docker.errors.APIError:
            pass


def test_the_next_submission_still_runs(images, tiny_track, tmp_path):
    """After every attack: a good spec-1.3 method runs to the end in the same sandbox."""
    record, run_dir = evaluate(RunSpec(track=tiny_track, method=images["good"], speedup=2, seed=0, runner="docker",
                                       out=tmp_path / "results", save_models=False, measure_latency=False))
    assert record.status == "ok", record.error
    assert record.speedup.achieved >= 2 and record.metric.final is not None
    assert not leftovers()
