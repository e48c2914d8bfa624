"""The static site renders in headless Chromium (Debian's package) with no console errors,
and the leaderboard figures equal a hand computation from the records."""

from __future__ import annotations

import os
import shutil
import statistics

import pytest
from typer.testing import CliRunner

from harness.views import leaderboard as lb
from harness.cli import app
from harness.views.site import build_site
from specs.result import ResultRecord

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def record(method, speedup, seed, final, base=90.0, status="ok", track="t", params=(100, 40)):
    ok = status == "ok"
    return ResultRecord.model_validate(dict(
        status=status, error=None if ok else "boom", run_key=f"{method}{speedup}{seed}",
        method={"id": method, "version": "1", "runner": "subprocess"}, track={"id": track, "hash": "0" * 64},
        model="resnet18", dataset="digits", seed=seed, strategy="protected_global",
        speedup={"target": speedup, "achieved": speedup * 1.01 if ok else None},
        macs={"base": 100.0, "pruned": 100 / speedup if ok else None},
        params={"base": params[0], "pruned": params[1] if ok else None},
        metric={"name": "top1", "base": base, "pruned": 10.0 if ok else None, "final": final if ok else None,
                "delta": final - base if ok else None},
        layer_channels={"conv1": [64, 32], "fc": [10, 10]}, min_channel_fraction=0.5,
        timing={"step_s": 1.0, "total_s": 2.0}, provenance={"harness_version": "0", "spec_version": "1.0"},
        started_at="a", finished_at="b"))


RECORDS = [record("a", 2, 0, 80.0), record("a", 2, 1, 84.0), record("b", 2, 0, 83.0), record("b", 2, 1, 83.0),
           record("a", 4, 0, 70.0), record("b", 4, 0, 0, status="failed")]


def test_leaderboard_equals_hand_computation():
    rows = {(r.method, r.speedup): r for r in lb.rows(RECORDS)}
    a2, b2, a4, b4 = rows["a", 2], rows["b", 2], rows["a", 4], rows["b", 4]
    assert a2.final.mean == 82.0 and a2.final.std == pytest.approx(statistics.stdev([80.0, 84.0]))
    assert b2.final.mean == 83.0 and b2.final.std == 0.0
    assert (b2.rank, a2.rank) == (1, 1)  # two seeds, differences inside the noise: a tie
    assert a2.delta.mean == pytest.approx(-8.0) and a2.params_ratio == pytest.approx(0.4)
    assert a4.rank == 1 and b4.rank is None and b4.final.n == 0 and b4.n_failed == 1 and b4.error == "boom"
    md = lb.markdown(lb.rows(RECORDS))
    assert "| t | 4x | protected_global | - | b | - | 0 (+1 failed) | 90.00 | n/a | n/a | failed |" in md  # shown
    assert "| 70.00 |" in md and "70.00 ±" not in md  # one seed: the value alone
    assert "| n/a |" in md  # these records carry no latency measurement: shown as such
@pytest.mark.skipif(not CHROMIUM and not os.environ.get("CI"), reason="no chromium (apt-get install chromium)")
def test_site_renders_in_headless_chromium(tmp_path):
    from playwright.sync_api import sync_playwright
    pages = build_site(RECORDS, tmp_path / "site")
    assert [p.name for p in pages] == ["index.html", "t.html"]
    errors = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"])
        page = browser.new_page(viewport={"width": 1280, "height": 1600})
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto((tmp_path / "site" / "index.html").as_uri())
        page.click("text=t")
        assert page.locator("h1").inner_text() == "t"
        main = page.locator("table").first
        assert main.locator("tr").count() == 1 + 4  # header + cells a@2, b@2, a@4, b@4 (failed, still shown)
        assert page.locator("table.average").count() == 1  # the Average view over 2x and 4x
        assert page.locator("tr.failed").count() == 1
        assert page.locator("svg").count() >= 3
        visible = page.locator(".run:visible")
        assert visible.count() == 1
        page.select_option("#run", index=2)  # choose another run: its per-layer chart shows instead
        assert page.locator(".run:visible").get_attribute("id") == "run2"
        page.screenshot(path=str(tmp_path / "site.png"), full_page=True)
        browser.close()
    assert not errors, errors
    assert (tmp_path / "site.png").stat().st_size > 10_000


def test_site_and_leaderboard_cli(tmp_path):
    for i, r in enumerate(RECORDS):
        d = tmp_path / "res" / f"run{i}"
        d.mkdir(parents=True)
        (d / "result.json").write_text(r.model_dump_json())
    res = CliRunner().invoke(app, ["site", str(tmp_path / "res"), "--out", str(tmp_path / "site")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "site" / "index.html").exists()
    res = CliRunner().invoke(app, ["leaderboard", str(tmp_path / "res"), "--format", "html"])
    assert res.exit_code == 0 and res.output.startswith("<!doctype html>")
