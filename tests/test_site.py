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
def test_csv_columns_and_average_view():
    import csv
    import io

    from scipy import stats as sp
    rows = list(csv.DictReader(io.StringIO(lb.to_csv(lb.rows(RECORDS)))))
    for column in ("n", "mean", "std", "ci95_low", "ci95_high", "rank", "pruned_recal_mean", "base_sha256"):
        assert column in rows[0]
    a2 = next(r for r in rows if r["importance"] == "a" and r["speedup"] == "2.0")
    low, high = sp.t.interval(0.95, 1, loc=82.0, scale=sp.sem([80.0, 84.0]))
    assert (int(a2["n"]), float(a2["mean"]), float(a2["std"])) == (2, 82.0, pytest.approx(2 * 2 ** 0.5))
    assert (float(a2["ci95_low"]), float(a2["ci95_high"])) == (pytest.approx(low), pytest.approx(high))
    a4 = next(r for r in rows if r["importance"] == "a" and r["speedup"] == "4.0")
    assert (a4["n"], a4["std"], a4["ci95_low"], a4["rank"]) == ("1", "", "", "1")  # n = 1: no spread
    avg = {(a.method, a.ranked): a.mean_rank for a in lb.average(lb.rows(RECORDS))}
    # b failed at 4x: ranked at one speedup of two, and left out of the Average view's blocks
    assert avg == {("a", 2): 1.0, ("b", 1): None}


def test_report_warns_and_sections_per_base():
    other = [r.model_copy(update={"run_key": r.run_key + "x", "provenance": r.provenance.model_copy(
        update={"checkpoint_sha256": "f" * 64})}) for r in RECORDS]
    text = lb.report(RECORDS + other)
    assert text.startswith("warning: records of t come from 2 base checkpoints")
    assert text.count("### t · base") == 2
    assert all(r.final.n <= 2 for r in lb.rows(RECORDS + other))  # never pooled into n = 4


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
