"""The platform end to end with real runs: ``pbench-harness serve`` as its own process, tasks run by the
sweep in its worker, live events, cancelling, a restart that resumes without running anything twice,
and the UI in Debian's headless Chromium (Playwright): build a digits task in the form, watch it
finish live, find it on the leaderboard, open its run page and download its record.

Screenshots of the main pages go to ``<test tmp>/screenshots`` (and to ``$PBENCH_SCREENSHOTS`` if set)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from harness.orchestration.events import events_path, read_events

pytestmark = pytest.mark.slow

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
MICRO_TRACK = """
id: micro-digits
description: web tests - eighth-width ResNet-18 on scikit-learn's digits, one-epoch recipes
model: {name: resnet18, kwargs: {width: 0.125}}
dataset: {name: digits}
checkpoint:
  pretrain: {epochs: 2, batch_size: 64, lr: 0.05, schedule: cosine}
pruning: {strategy: protected_global, speedups: [2]}
calibration: {num_samples: 32, batch_size: 32}
sparsify: {epochs: 1, batch_size: 64, lr: 0.01, schedule: constant}
retrain: {epochs: 1, batch_size: 128, lr: 0.01, schedule: cosine}
seeds: [0]
"""
SLEEPY = """
import time
from specs.sdk import ImportanceMethod, member_rows

class Method(ImportanceMethod):
    def score_group(self, group, obs):
        time.sleep(120)  # long enough to be cancelled or interrupted while it scores
        root = next(m for m in group.members if m.layer == group.root and m.dim == "out")
        return member_rows(root, obs.weights[root.weight]).abs().sum(1)
"""
CRASHY = """
from specs.sdk import ImportanceMethod

class Method(ImportanceMethod):
    def score_group(self, group, obs):
        raise RuntimeError("the criterion divided by zero")
"""


@pytest.fixture(scope="module")
def micro_track(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("tracks") / "micro-digits.yaml"
    path.write_text(MICRO_TRACK)
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, store: Path, log: Path):
        self.store, self.log, self.port = store, log, _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = None

    def start(self) -> "Server":
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "from harness.cli import main; main()", "serve", str(self.store),
             "--port", str(self.port)], stdout=open(self.log, "ab"), stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log.read_text()
            try:
                me = httpx.get(f"{self.url}/api/me", timeout=2).json()
                self.client = httpx.Client(base_url=self.url, headers={"X-PBench-CSRF": me["csrf"]}, timeout=30)
                return self
            except httpx.HTTPError:
                time.sleep(0.3)
        raise AssertionError(f"the server did not start: {self.log.read_text()}")

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(30)


@contextmanager
def serving(store: Path, log: Path):
    server = Server(store, log).start()
    try:
        yield server
    finally:
        if server.proc.poll() is None:
            server.stop()


def wait(what, timeout: float, step: float = 0.3):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = what()
        if value:
            return value
        time.sleep(step)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what.__doc__ or what}")


def _events(store: Path, key: str) -> list[dict]:
    return read_events(events_path(store, key))[0]


def _starts(store: Path, key: str) -> int:
    return sum(e["kind"] == "start" for e in _events(store, key))


def test_restart_resumes_without_running_twice_and_runs_cancel(tmp_path, micro_track, make_method):
    store, log = tmp_path / "store", tmp_path / "server.log"
    sleepy = make_method(SLEEPY, id="sleepy", resources={"memory_mb": 512, "cpus": 1, "call_timeout_s": 600})
    plan = {"track": str(micro_track), "methods": ["magnitude_l1", str(sleepy.path)], "speedups": [2], "seeds": [0],
            "save_models": False}
    with serving(store, log) as server:
        res = server.client.post("/api/plans", json=plan)
        assert res.status_code == 201, res.text
        plan_id = res.json()["plan"]["id"]
        ok_key, sleepy_key = [r["key"] for r in res.json()["runs"]]

        def first_done_second_scoring():
            runs = server.client.get(f"/api/plans/{plan_id}").json()["runs"]
            return runs[0]["status"] == "ok" and runs[1]["status"] == "running" and runs[1]["stage"] == "evaluate"
        wait(first_done_second_scoring, 600)
        first = server.client.get(f"/api/runs/{ok_key}").json()["record"]
        # a graceful stop, the worker with it (uvicorn re-raises the SIGTERM it handled: the CLI then exits 143)
        assert server.stop() in (0, -signal.SIGTERM, 128 + signal.SIGTERM)
    assert not list((store / "micro-digits").glob(f"*-{sleepy_key[:8]}/result.json"))  # interrupted: no record

    with serving(store, log) as server:  # the same store: the plan resumes
        def resumed_and_scoring():
            return _starts(store, sleepy_key) == 2 and server.client.get(f"/api/runs/{sleepy_key}").json()["stage"] == "evaluate"
        wait(resumed_and_scoring, 300)
        plan_now = server.client.get(f"/api/plans/{plan_id}").json()["plan"]
        assert plan_now["state"] == "running" and plan_now["resumed"] == 1
        t0 = time.monotonic()
        res = server.client.post(f"/api/runs/{sleepy_key}/cancel")
        assert res.status_code == 200 and res.json()["result"] == "stopping now", res.text

        def cancelled():
            return server.client.get(f"/api/runs/{sleepy_key}").json()["status"] == "cancelled"
        wait(cancelled, 60, 0.05)
        cancel_s = time.monotonic() - t0
        wait(lambda: server.client.get(f"/api/plans/{plan_id}").json()["plan"]["state"] == "finished", 60)
        record = server.client.get(f"/api/runs/{sleepy_key}").json()["record"]
        assert record["status"] == "cancelled" and record["error"].startswith("cancelled by local at ")
        # the run that had finished before the restart was not run again
        assert server.client.get(f"/api/runs/{ok_key}").json()["record"] == first
        assert _starts(store, ok_key) == 1 and _starts(store, sleepy_key) == 2
        assert "skipped (ok, recorded)" in server.client.get(f"/api/plans/{plan_id}/log").json()["text"]

        # cancelling a whole task: its run in flight is recorded cancelled, the task ends cancelled
        res = server.client.post("/api/plans", json={**plan, "methods": [str(sleepy.path)], "seeds": [1]})
        plan2, key2 = res.json()["plan"]["id"], res.json()["runs"][0]["key"]
        wait(lambda: server.client.get(f"/api/runs/{key2}").json()["stage"] == "evaluate", 300)
        assert server.client.post(f"/api/plans/{plan2}/cancel").status_code == 200
        wait(lambda: server.client.get(f"/api/plans/{plan2}").json()["plan"]["state"] == "cancelled", 60)
        assert server.client.get(f"/api/runs/{key2}").json()["record"]["status"] == "cancelled"
        board = server.client.get("/api/leaderboards/micro-digits", params={"view": "2x"}).json()
        by_name = {e["name"]: e for s in board["sections"] for e in s["entries"]}
        assert by_name["magnitude_l1"]["rank"] == 1 and by_name["sleepy"]["n_cancelled"] == 2
    assert not list(store.rglob(".staging-*"))
    print(f"\ncancel -> recorded cancelled: {cancel_s:.2f} s")


@pytest.mark.skipif(not CHROMIUM and not os.environ.get("CI"), reason="no chromium (apt-get install chromium)")
def test_browser_builds_a_digits_task_and_follows_it_live(tmp_path, micro_track, make_method):
    from playwright.sync_api import expect, sync_playwright
    t_test = time.monotonic()
    store, shots = tmp_path / "store", tmp_path / "screenshots"
    shots.mkdir()
    crashy = make_method(CRASHY, id="crashy")
    errors: list[str] = []
    timings: dict[str, float] = {}
    with serving(store, tmp_path / "server.log") as server, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"])
        page = browser.new_page(viewport={"width": 1360, "height": 900}, accept_downloads=True)
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("request", lambda r: errors.append(f"off-site request {r.url}")
                if not r.url.startswith((server.url, "data:")) else None)
        shot = lambda name: page.screenshot(path=str(shots / f"{name}.png"), full_page=True)  # noqa: E731

        # build the task; a bad speedup first: the CLI's message shows next to the field
        page.goto(f"{server.url}/new")
        page.fill("#track_file", str(micro_track))
        page.fill("#speedups", "0.5")
        expect(page.locator('.form-row[data-field="speedups"] .error')).to_have_text(
            "speedup must be > 1 (e.g. 2, 4, 8), got 0.5", timeout=60_000)
        shot("builder-invalid")
        page.fill("#speedups", "2")
        page.fill("#seeds", "0")
        page.fill("#label", "digits in the browser")
        expect(page.locator("#dry")).to_contain_text("1 runs on micro-digits at 2x, seeds 0: 1 to run", timeout=30_000)
        shot("builder")
        t_submit = time.monotonic()
        page.click("#submit")
        page.wait_for_url("**/plans/*")
        page.click("#runs a")  # its one run, queued or already running
        page.wait_for_url("**/runs/*")
        key = page.url.rsplit("/", 1)[1]
        # live: stages, epochs and losses arrive while the run runs (the page reloads once it ends)
        expect(page.locator("#stages")).to_contain_text("retrain", timeout=600_000)
        shot("run-live")
        expect(page.locator(".stat").first).to_contain_text("final top1", timeout=600_000)
        latencies = page.evaluate(f"JSON.parse(sessionStorage.getItem('pbenchLatencies:{key}') || '[]')")
        t_done = time.monotonic()
        shot("run")
        with page.expect_download() as download:
            page.click('a[data-file="result.json"]')
        record = json.loads(Path(download.value.path()).read_text())
        assert record == server.client.get(f"/api/runs/{key}").json()["record"] and record["status"] == "ok"
        page.goto(f"{server.url}/tracks/micro-digits?view=2x")
        row = page.locator("table.board tbody tr", has_text="magnitude_l1")
        expect(row).to_have_count(1)
        timings["submit_to_leaderboard_s"] = time.monotonic() - t_submit
        timings["submit_to_run_page_finished_s"] = t_done - t_submit
        assert row.locator("td.rank").inner_text() == "1"
        shot("leaderboard")

        # a failing run: what its user sees
        res = server.client.post("/api/plans", json={"track": str(micro_track), "methods": [str(crashy.path)],
                                                     "label": "a method that crashes"})
        failed_key = res.json()["runs"][0]["key"]
        wait(lambda: server.client.get(f"/api/runs/{failed_key}").json()["status"] == "failed", 300)
        page.goto(f"{server.url}/plans/{res.json()['plan']['id']}")
        expect(page.locator("#runs")).to_contain_text("the criterion divided by zero")
        shot("plan-failed")
        page.goto(f"{server.url}/runs/{failed_key}")
        expect(page.locator(".alert")).to_contain_text("This run failed")
        expect(page.locator(".alert")).to_contain_text("RuntimeError: the criterion divided by zero")
        shot("run-failed")
        page.goto(f"{server.url}/tracks/micro-digits?view=2x")
        page.locator("input.cmp").first.check()
        page.goto(f"{server.url}/compare?runs={key},{failed_key}")
        expect(page.locator("#compare-table")).to_contain_text("failed")
        shot("compare")
        for name, url in (("index", "/"), ("tasks", "/plans"), ("uploads", "/uploads"), ("api", "/api-docs")):
            page.goto(server.url + url)
            shot(name)
        browser.close()
    # the one expected: the browser logs the 422 that answered the invalid speedup
    assert [e for e in errors if "status of 422" not in e] == [], errors
    assert latencies, "no live event reached the page"
    timings.update(latency_median_ms=1000 * statistics.median(latencies), latency_max_ms=1000 * max(latencies),
                   latency_events=len(latencies), test_wall_s=time.monotonic() - t_test)
    (shots / "timings.json").write_text(json.dumps(timings, indent=1))
    if os.environ.get("PBENCH_SCREENSHOTS"):
        shutil.copytree(shots, os.environ["PBENCH_SCREENSHOTS"], dirs_exist_ok=True)
    print("\n" + json.dumps(timings))
    assert all((shots / f"{n}.png").stat().st_size > 10_000 for n in ("builder", "run-live", "run", "leaderboard",
                                                                       "run-failed", "compare", "index"))
