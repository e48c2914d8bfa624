"""Spare method processes (:mod:`harness.runners.spares`): a sweep launches the next run's method while
this run retrains. The run that takes it over measures what it measures with a process of its own started
cold; a spare no run takes, or one that died while it waited, is never used and leaves nothing behind.
About 150 s (three tiny-track runs, a few method starts, three stopped two-worker sweeps, one whose worker is
killed outright and its resume)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

import pytest
import torch

from harness.methods import find_method
from harness.orchestration.sweep import run_each
from harness.protocol.run import RunSpec, evaluate
from harness.runners import spares
from harness.runners.subprocess_runner import SubprocessClient
from specs.messages import Group, Member

ECHO = """
    import torch
    from specs.sdk import ImportanceMethod
    class Method(ImportanceMethod):
        def score_group(self, group, obs):  # what the handshake said: the seed, then hyperparameter a
            return torch.tensor([float(self.seed), float(self.hp["a"])])
    """
HP = {"hyperparameters": {"a": {"type": "int", "default": 0, "minimum": 0, "maximum": 9}}}
GROUP = Group(id="g", root="fc", n_channels=2,
              members=[Member(layer="fc", module_type="Linear", kind="linear", dim="out", idxs=[0, 1],
                                    root_idxs=[0, 1], weight="fc.weight")])
WEIGHTS = {"weights": {"fc.weight": torch.ones(2, 3)}}


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture(autouse=True)
def no_spare_left():
    yield
    spares.discard()


def stocked(factory):
    with spares.expecting(factory):
        spares.stock()
    spare = spares.current()
    assert spare is not None and spare.connected(60)  # launched and done starting, before any run asked
    return spare


def test_the_run_that_takes_a_spare_gets_its_own_seed_hyperparameters_and_deadline(make_method):
    echo = make_method(ECHO, **HP)
    spare = stocked(lambda: SubprocessClient(echo, {"a": 1}, 0, run_timeout=5))
    before = spares.taken
    fresh = SubprocessClient(echo, {"a": 7}, 3, run_timeout=600)
    client = spares.take(fresh)
    assert client is spare and spares.taken == before + 1 and spares.current() is None
    assert not fresh.exchange.exists()  # the fresh client it replaced is closed
    with client.begin():
        scores = client.score(0, [GROUP], WEIGHTS)
        assert scores["g"].tolist() == [3.0, 7.0]
        assert client.run_timeout == 600 and client.run_deadline == fresh.run_deadline
        assert client.start_seconds < 60
    assert not client.exchange.exists()


def test_a_spare_of_another_method_is_not_taken_and_leaves_nothing(make_method):
    echo, other = make_method(ECHO, **HP), make_method(ECHO, **{**HP, "id": "other"})
    spare = stocked(lambda: SubprocessClient(echo, {}, 0))
    pid, exchange = spare._proc.pid, spare.exchange
    fresh = SubprocessClient(other, {}, 0)
    assert spares.take(fresh) is fresh and spares.current() is spare
    # other caps (the organizers' limits) are another key too
    capped = SubprocessClient(echo, {}, 0, limits=spare.limits.__class__(**{**spare.limits.__dict__,
                                                                            "max_log_mb": 1}))
    assert spares.take(capped) is capped
    fresh.close()
    capped.close()
    spares.stock()  # no sweep expects a run: the unused spare goes
    assert spares.current() is None and not exchange.exists()
    assert not alive(pid)


def test_a_spare_that_died_while_it_waited_is_never_handed_out(make_method):
    echo = make_method(ECHO, **HP)
    spare = stocked(lambda: SubprocessClient(echo, {}, 0))
    spare._proc.kill()
    spare._proc.wait()
    fresh = SubprocessClient(echo, {}, 4)
    client = spares.take(fresh)
    assert client is fresh and not spare.exchange.exists()
    with client:
        assert client.score(0, [GROUP], WEIGHTS)["g"].tolist() == [4.0, 0.0]


def test_a_sweeps_next_run_takes_the_spare_and_measures_what_a_cold_start_measures(tiny_track, tmp_path):
    method = find_method("random")  # its channels are drawn from the seed the handshake carries

    def spec(seed, out, runner="subprocess"):
        return RunSpec(track=tiny_track, method=method, speedup=2, seed=seed, runner=runner, out=out,
                       measure_latency=False, save_models=False)

    before = spares.taken
    swept = run_each([spec(0, tmp_path / "sweep"), spec(1, tmp_path / "sweep")]).records
    # the first run's method started beside its base stage, the second's while the first retrained
    assert spares.taken == before + 2 and spares.current() is None  # the last run leaves no spare
    cold, _ = evaluate(spec(1, tmp_path / "cold", "inprocess"))  # no process at all
    assert [r.status for r in (*swept, cold)] == ["ok"] * 3
    assert swept[1].layer_channels == cold.layer_channels != swept[0].layer_channels
    assert (swept[1].macs, swept[1].metric, swept[1].run_key) == (cold.macs, cold.metric, cold.run_key)


def test_a_run_launches_no_spare_of_another_method(make_method):
    """(review) Another method's process would run its code while this run retrains and its latency is
    measured: a run launches the next run's method only when it is its own."""
    echo, other = make_method(ECHO, **HP), make_method(ECHO, **{**HP, "id": "other"})
    mine = SubprocessClient(echo, {}, 0)
    with spares.expecting(lambda: SubprocessClient(other, {}, 0)):
        spares.stock(like=mine)
        assert spares.current() is None
    with spares.expecting(lambda: SubprocessClient(echo, {"a": 2}, 1)):  # its own method, another seed: launched
        spares.stock(like=mine)
        assert spares.current() is not None
    mine.close()


STOPPED = """
import sys, time
import harness.cli
from harness.runners import spares
from harness.runners.subprocess_runner import SubprocessClient
from harness.methods import load_source

def serve():  # stands in for a command whose run has a spare waiting
    with spares.expecting(lambda: SubprocessClient(load_source(sys.argv[1]), {}, 0)):
        spares.stock()
    spare = spares.current()
    assert spare.connected(60)
    print(spare._proc.pid, spare.exchange, flush=True)
    time.sleep(120)

harness.cli.app = serve
harness.cli.main()
"""


def test_a_harness_stopped_by_sigterm_leaves_no_method_process_and_no_exchange_folder(make_method, tmp_path):
    """(review) ``kill`` of the CLI (a queue's cancel, a Slurm stop) while a spare waits: the CLI unwinds, the
    spare's process is killed and its exchange folder removed."""
    echo = make_method(ECHO, **HP)
    script = tmp_path / "stopped.py"
    script.write_text(STOPPED)
    proc = subprocess.Popen([sys.executable, str(script), str(echo.path)], stdout=subprocess.PIPE, text=True)
    pid, exchange = proc.stdout.readline().split()
    assert alive(int(pid)) and Path(exchange).is_dir()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(60) == 128 + signal.SIGTERM
    assert not Path(exchange).exists()
    deadline = time.monotonic() + 10
    while alive(int(pid)) and time.monotonic() < deadline:  # (not our child: reaped by its parent or init)
        time.sleep(0.1)
    assert not alive(int(pid))


SLEEPY = """
    import time
    from specs.sdk import ImportanceMethod
    class Method(ImportanceMethod):
        def score_group(self, group, obs):
            time.sleep(600)
    """


def processes(*words: str, parent: Optional[int] = None) -> dict[int, list[str]]:
    """Running processes whose command line holds every one of ``words`` (children of ``parent``): pid -> argv."""
    found = {}
    for entry in Path("/proc").iterdir():
        try:
            argv = (entry / "cmdline").read_bytes().decode().split("\0")
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if entry.name.isdigit() and all(w in argv or any(w in a for a in argv) for w in words) \
                and parent in (None, ppid):
            found[int(entry.name)] = argv
    return found


def method_processes(method_dir: Path) -> dict[int, Path]:
    """The running method processes of ``method_dir``: pid -> exchange folder."""
    return {pid: Path(argv[argv.index("--exchange") + 1])
            for pid, argv in processes("specs.sdk", str(method_dir), "--exchange").items()}


def gone(pids, seconds: float = 15) -> bool:
    deadline = time.monotonic() + seconds
    while any(alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    return not any(alive(p) for p in pids)


@pytest.mark.parametrize("stop", ["SIGTERM to the CLI", "SIGTERM to its process group", "SIGKILL to the CLI"])
def test_a_sweep_of_two_workers_stops_at_once_and_leaves_nothing_behind(stop, make_method, tiny_track_file,
                                                                         tmp_path):
    """``sweep --jobs 2`` stopped while both workers' runs wait for scores. SIGTERM (to the CLI's pid, as a queue's
    cancel may send it, or to its process group, as a terminal or a service manager does): the two runs in flight
    unwind in their workers (method processes killed, exchange folders and the runs' staging folders removed),
    none of the runs queued behind them starts, exit 143. The CLI alone used to wait for every queued run to
    finish, and a worker stopped by its own SIGTERM left its method process behind. (review) SIGKILL to the CLI:
    its workers used to live on, running the runs queued to them; now they stop within seconds."""
    sleepy = make_method(SLEEPY, resources={"memory_mb": 512, "cpus": 1, "call_timeout_s": 600})
    out, log = tmp_path / "out", tmp_path / "sweep.log"
    proc = _sweep(sleepy.path, tiny_track_file, out, log)
    try:
        running, workers = _both_asking(proc, sleepy.path, log)
        if stop == "SIGTERM to the CLI":
            proc.send_signal(signal.SIGTERM)
        elif stop == "SIGTERM to its process group":
            os.killpg(proc.pid, signal.SIGTERM)
        else:
            proc.kill()
        assert proc.wait(60) == (-signal.SIGKILL if stop == "SIGKILL to the CLI" else 128 + signal.SIGTERM), \
            log.read_text()
        assert gone(workers) and gone(running)  # (the workers notice a CLI killed outright within a second)
        output = log.read_text()
        assert "Traceback" not in output, output
        assert not any(folder.exists() for folder in running.values())
        assert not method_processes(sleepy.path)  # no run started after the stop
        assert not list(out.rglob("*.json"))  # no record: stopped runs run again next time
        assert not [p for p in out.rglob(".staging-*")]
    finally:  # (a sweep that did not stop is not left running)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        for pid in method_processes(sleepy.path):
            os.killpg(pid, signal.SIGKILL)
        proc.wait()


def _sweep(method: Path, track: Path, out: Path, log: Path, *extra: str) -> subprocess.Popen:
    """``sweep --jobs 2`` of four runs, in a session of its own, printing to ``log`` (a file: a pipe would block
    while a worker held it)."""
    with open(log, "w") as f:
        return subprocess.Popen([sys.executable, "-m", "harness.cli", "sweep", "--track", str(track), "--methods",
                                 str(method), "--speedups", "2,3,4,5", "--seeds", "0", "--jobs", "2", "--no-models",
                                 "--out", str(out), *extra], stdout=f, stderr=subprocess.STDOUT, start_new_session=True)


def _both_asking(proc: subprocess.Popen, method: Path, log: Path) -> tuple[dict[int, Path], dict[int, list[str]]]:
    """Wait until both workers' runs ask ``method`` for scores: (method pid -> exchange folder, worker pids)."""
    deadline = time.monotonic() + 180
    while len(running := method_processes(method)) < 2:
        assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
        time.sleep(0.2)
    workers = processes("spawn_main", parent=proc.pid)
    assert len(workers) == 2
    return running, workers


HELD = """
    import os, time
    from specs.sdk import ImportanceMethod
    class Method(ImportanceMethod):
        def score_group(self, group, obs):  # in its call while {hold} (or {hold}-<its pid>) exists
            open(os.path.join({asking!r}, str(os.getpid())), "w").close()
            while os.path.exists({hold!r}) or os.path.exists(f"{hold}-{{os.getpid()}}"):
                time.sleep(0.1)
            return obs.weights[group.members[0].weight].abs().flatten(1).sum(1)[:group.n_channels]
    """

#: a sweep with live events, as the web platform's worker runs one: argv track, method, out, [retry]
EVENTFUL_SWEEP = """
import sys
from pathlib import Path
from harness import stopping
from harness.orchestration.events import EventLog
from harness.plan import Plan, run_plan
if __name__ == "__main__":  # (the pool's workers are spawned: they import this file)
    stopping.install()
    out = Path(sys.argv[3])
    plan = Plan.build(track=sys.argv[1], methods=[sys.argv[2]], speedups=[2, 3, 4], seeds=[0], out=out, jobs=2,
                      save_models=False, retry_failed=len(sys.argv) > 4)
    summary = run_plan(plan.resolve(), log=lambda line: print(line, flush=True), events=EventLog(out))
    sys.exit(1 if summary.failed else 0)
"""


def test_a_worker_killed_outright_costs_its_own_run_only(make_method, tiny_track_file, tmp_path):
    """(review) SIGKILL to a worker of a two-worker sweep (what the out-of-memory killer does) ended the whole
    sweep (a traceback, then one line), and a run killed so every time stopped every resume of it. Now:

    1. a worker killed in its run: that run alone is recorded ``failed`` with the signal (and its live ``end``
       event: the web showed it running), the other worker's run (stopped by the broken pool) runs again;
    2. (review) a worker killed while idle, holding no run, stopped the sweep (exit 2) and lost the run in flight:
       now it costs nothing, that run runs again;
    3. the sweep finishes the rest: exit 1 for the failed run, ``--retry-failed`` runs it again.

    The killed worker's method process, blocked in its call, ends at once (the SDK exits when the harness's end
    of the socket closes; it used to compute on for its call timeout), and its exchange folders are removed."""
    hold, asking = tmp_path / "hold", tmp_path / "asking"
    hold.touch()
    asking.mkdir()
    method = make_method(HELD.format(hold=str(hold), asking=str(asking)),
                         resources={"memory_mb": 512, "cpus": 1, "call_timeout_s": 600})
    script, out, log = tmp_path / "eventful_sweep.py", tmp_path / "out", tmp_path / "sweep.log"
    script.write_text(EVENTFUL_SWEEP)

    def sweep(*extra):
        with open(log, "w") as f:
            return subprocess.Popen([sys.executable, str(script), str(tiny_track_file), str(method.path), str(out),
                                     *extra], stdout=f, stderr=subprocess.STDOUT, start_new_session=True)

    def in_call(n):  # the first n method processes to enter their call (spares wait for a run: not these)
        deadline = time.monotonic() + 180
        while len(pids := sorted(asking.iterdir(), key=lambda p: p.stat().st_mtime_ns)) < n:
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        return [int(p.name) for p in pids[:n]]

    def worker_of(method_pid):
        return next(w for w in processes("spawn_main", parent=proc.pid) if method_pid in processes(parent=w))

    def records():
        return [json.loads(p.read_text()) for p in out.rglob("result.json")]

    proc = sweep()
    try:
        first, _ = in_call(2)
        killed, its_folder = worker_of(first), method_processes(method.path)[first]
        os.kill(killed, signal.SIGKILL)
        assert gone([first], 10)  # within its call, not at its end
        third, fourth = in_call(4)[2:]  # the fresh pool's two runs
        Path(f"{hold}-{fourth}").touch()
        hold.unlink()
        idle = worker_of(third)
        deadline = time.monotonic() + 120
        while len(records()) < 2:  # the third's run is recorded: its worker idles (no run is left for it)
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        os.kill(idle, signal.SIGKILL)
        Path(f"{hold}-{fourth}").unlink()
        assert proc.wait(240) == 1, log.read_text()
        output = log.read_text()
        assert "Traceback" not in output, output
        assert "x seed 0: its worker process was killed by SIGKILL; recorded as failed, the sweep goes on" in output
        assert "a worker process of the sweep died outside any run" in output, output
        assert sorted(r["status"] for r in records()) == ["failed", "ok", "ok"], records()
        failed, = [r for r in records() if r["status"] == "failed"]
        assert failed["error"].startswith("its sweep worker process was killed by SIGKILL during the run")
        events = [json.loads(line) for p in (out / ".events").iterdir() for line in p.read_text().splitlines()]
        assert {"kind": "end", "status": "failed", "error": failed["error"], "final": None} in [
            {k: v for k, v in e.items() if k != "t"} for e in events]
        assert not its_folder.exists() and not list(Path(tempfile.gettempdir()).glob(f"pbx-*{killed}-*"))
        assert not list(Path(tempfile.gettempdir()).glob(f"pbx-*{idle}-*"))
        assert not list(out.rglob(".staging-*")) and not method_processes(method.path)
        proc = sweep("retry")
        assert proc.wait(240) == 0, log.read_text()
        assert sorted(r["status"] for r in records()) == ["ok"] * 3
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        for pid in method_processes(method.path):
            os.killpg(pid, signal.SIGKILL)
        proc.wait()


def test_a_run_that_ends_before_its_prune_stage_leaves_no_process_behind(tiny_track, tmp_path):
    """(review) The method launched as ``evaluate`` begins is killed when the run ends without using it (here
    a base that is not the one the run asks for), in a caller that lives on (a notebook, the smoke run)."""
    spec = RunSpec(track=tiny_track, method=find_method("magnitude_l1"), speedup=2, seed=0, runner="subprocess",
                   out=tmp_path, base_sha256="0" * 64, measure_latency=False, save_models=False)
    record, _ = evaluate(spec)
    assert record.status == "failed" and spares.current() is None


def test_stale_exchange_folders_are_those_of_processes_gone(make_method, tmp_path, monkeypatch):
    """``remove_stale`` (a sweep's start; a sweep whose worker was killed outright) removes the exchange and
    staging folders and logs whose maker's pid is gone on this host, and nothing of a live process, of another
    host sharing the folder, or not named by a pid. (review) A name holding a number too large for a pid made
    every sweep of every user end in a traceback before any run."""
    from harness.runners.socket_client import _host_tag

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    done = subprocess.Popen([sys.executable, "-c", "pass"])
    done.wait()
    host = _host_tag()
    dead, live, other = f"{done.pid}-{host}", f"{os.getpid()}-{host}", f"{done.pid}-{'0' * 8}"
    stale = [f"pbx-{dead}-a", f"pbx-own-{dead}-b"]
    kept = [f"pbx-{live}-c", f"pbx-own-{live}-d", f"pbx-{other}-e", "pbx-x-f", f"pbx-{2**31}-{host}-g",
            f"pbx-{'9' * 30}-{host}-h", "other"]
    for name in stale + kept:
        (tmp_path / name).mkdir()
    (tmp_path / f"pbx-{dead}-a.log").write_text("log")
    assert SubprocessClient.remove_stale() == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(kept)
    client = SubprocessClient(make_method(ECHO, **HP), {}, 0)  # (the folders a client makes are so named)
    try:
        assert client.exchange.name.startswith(f"pbx-{live}-") and client._staging.name.startswith(f"pbx-own-{live}-")
    finally:
        client.close()


FORKY = """
    import subprocess, time
    from specs.sdk import ImportanceMethod
    class Method(ImportanceMethod):
        def score_group(self, group, obs):  # a helper process of its own, then a long call
            child = subprocess.Popen(["sleep", "300"])
            open({pid_file!r}, "w").write(str(child.pid))
            time.sleep(600)
    """

KILLED_HARNESS = """
import sys
import torch
from harness.methods import load_source
from harness.runners.subprocess_runner import SubprocessClient
from specs.messages import Group, Member
client = SubprocessClient(load_source(sys.argv[1]), {}, 0, call_timeout=600)
group = Group(id="g", root="fc", n_channels=2, members=[Member(layer="fc", module_type="Linear", kind="linear",
              dim="out", idxs=[0, 1], root_idxs=[0, 1], weight="fc.weight")])
with client.begin():
    client.score(0, [group], {"weights": {"fc.weight": torch.ones(2, 3)}})
"""


def test_a_method_and_its_own_processes_end_when_the_harness_is_killed_outright(make_method, tmp_path):
    """A harness killed outright in the middle of a call (SIGKILL: the out-of-memory killer) never sends its
    shutdown nor kills the method's process group. The SDK notices its socket's other end close: the method
    and (review) the processes it started end within seconds, instead of computing on for their call timeout."""
    pid_file, script = tmp_path / "child.pid", tmp_path / "killed_harness.py"
    method = make_method(FORKY.format(pid_file=str(pid_file)),
                         resources={"memory_mb": 512, "cpus": 1, "call_timeout_s": 600})
    script.write_text(KILLED_HARNESS)
    proc = subprocess.Popen([sys.executable, str(script), str(method.path)])
    try:
        deadline = time.monotonic() + 120
        while not (pid_file.exists() and pid_file.read_text()):
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.1)
        (its_method, _), = method_processes(method.path).items()
        child = int(pid_file.read_text())
        assert alive(child)
        proc.kill()
        proc.wait()
        assert gone([its_method, child], 10)
    finally:
        proc.kill()
        for pid in method_processes(method.path):
            os.killpg(pid, signal.SIGKILL)
