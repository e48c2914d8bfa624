"""Recipe swap (Wang et al. 2023): methods x retraining recipes, and whether a ranking holds.

The report is checked against hand-built records (and Kendall's tau against scipy); the command
runs end to end on a tiny track with two recipes."""

from __future__ import annotations

import itertools

import pytest
import yaml
from scipy.stats import kendalltau
from typer.testing import CliRunner

from harness.views import recipe_swap as swap
from harness.cli import app
from harness.methods import find_method
from harness.protocol.run import RunSpec, run_key_of
from harness.store import Store
from specs.result import MethodInfo, MetricInfo, Provenance, ResultRecord, Speedup, TrackInfo


def record(method: str, recipe, final: float, seed: int = 0, speedup: float = 2.0, status: str = "ok"):
    return ResultRecord(
        status=status, error=None if status == "ok" else "boom", run_key=f"{method}-{recipe}-{seed}-{final}",
        method=MethodInfo(id=method, version="1", runner="inprocess"), track=TrackInfo(id="t", hash="0" * 64),
        model="resnet18", dataset="digits", seed=seed, strategy="protected_global", recipe=recipe,
        speedup=Speedup(target=speedup, achieved=speedup if status == "ok" else None),
        macs={"base": 2.0, "pruned": 1.0 if status == "ok" else None},
        metric=MetricInfo(name="top1", base=90, final=final if status == "ok" else None),
        provenance=Provenance(harness_version="0", spec_version="1.2"), started_at="x", finished_at="y")


def test_a_ranking_that_flips_with_the_recipe():
    # A wins under the short recipe, B under the long one; as published (A+short vs B+long) B wins
    records = [record("A", "short", 80), record("A", "short", 82, seed=1), record("B", "short", 78),
               record("B", "short", 79, seed=1), record("A", None, 88), record("B", None, 91),
               record("A", "short", 99, speedup=4.0),  # another setting: ignored
               record("B", "short", 99, status="failed")]  # failures never enter a mean
    report = swap.analyse(records, ["A", "B"], ["short", "track"], 2.0, own={"A": "short", "B": "track"})
    assert report.complete
    assert report.cells[("A", "short")].mean == 81 and report.cells[("A", "short")].n == 2
    assert report.cells[("A", "short")].std == pytest.approx(2 ** 0.5)
    assert report.cells[("B", "short")].mean == 78.5
    assert report.rankings == {"short": ["A", "B"], "track": ["B", "A"]}
    assert report.tie_ranks["short"] == {"A": 1, "B": 1}  # two seeds: not significant, a tie
    [pair] = report.pairs
    assert pair.winners == {"short": "A", "track": "B"} and not pair.holds and pair.published == "B"
    assert report.holds is False and report.kendall[("short", "track")] == -1.0
    text = swap.markdown(report)
    assert "does NOT hold: A vs B: A under short, B under track" in text
    assert "81.00 ± 12.71 (n=2, rank 1)" in text  # ± the 95% CI: t(0.975, 1) = 12.71 times 1.41 / sqrt 2
    assert "88.00 (n=1, rank 1)" in text  # one seed: the value alone


def test_a_ranking_that_holds_but_was_published_unfairly():
    # A beats B under both recipes, yet B with its (better) recipe beats A with its own
    records = [record("A", "weak", 70), record("B", "weak", 65), record("A", None, 90), record("B", None, 85)]
    report = swap.analyse(records, ["A", "B"], ["weak", "track"], 2.0, own={"A": "weak", "B": "track"})
    assert report.holds is True and report.pairs[0].published == "B"
    assert report.misleading() == report.pairs
    text = swap.markdown(report)
    assert "Verdict: the ranking holds under every recipe" in text
    assert "disagree with a same-recipe comparison: A vs B" in text


def test_no_verdict_from_an_incomplete_matrix():
    report = swap.analyse([record("A", "x", 70), record("B", "x", 60), record("A", None, 80)],
                          ["A", "B"], ["x", "track"], 2.0)
    assert report.missing == [("B", "track")] and report.holds is None and not report.pairs
    assert "No verdict: missing runs for B with track" in swap.markdown(report)


@pytest.mark.parametrize("x, y", [([1, 2, 3, 4], [1, 3, 2, 4]), ([1, 1, 2, 3], [2, 1, 3, 3]),
                                  ([4, 3, 2, 1, 0], [0, 1, 2, 3, 4]), ([5, 1, 4, 2, 3], [5, 2, 4, 1, 1])])
def test_kendall_tau_b_equals_scipy(x, y):
    assert swap.kendall_tau(x, y) == pytest.approx(kendalltau(x, y).statistic)


def test_recipe_is_part_of_the_run_identity(tiny_track):
    hot = tiny_track.retrain.model_copy(update={"lr": 0.5})
    track = tiny_track.model_copy(update={"recipes": {"hot": hot, "hot2": hot}})
    spec = RunSpec(track=track, method=find_method("random"), speedup=2, seed=0)
    plain = run_key_of(spec)
    assert plain == run_key_of(RunSpec(track=tiny_track, method=find_method("random"), speedup=2, seed=0))
    keys = {plain, run_key_of(RunSpec(**{**spec.__dict__, "recipe": "hot"})),
            run_key_of(RunSpec(**{**spec.__dict__, "recipe": "hot2"}))}
    assert len(keys) == 3  # the name counts too: two names may mean two papers' recipes
    changed = track.model_copy(update={"recipes": {"hot": hot.model_copy(update={"epochs": 9}), "hot2": hot}})
    assert run_key_of(RunSpec(**{**spec.__dict__, "track": changed, "recipe": "hot"})) not in keys


@pytest.mark.slow
def test_recipe_swap_command_end_to_end(tiny_track, tmp_path):
    cfg = tiny_track.model_dump(mode="json", exclude={"spec_version"})
    cfg["recipes"] = {"none": {"epochs": 0, "batch_size": 64, "lr": 0.01}}  # no retraining at all
    track_file = tmp_path / "swap.yaml"
    track_file.write_text(yaml.safe_dump(cfg))
    args = ["recipe-swap", "--track", str(track_file), "--methods", "magnitude_l1,random",
            "--recipes", "track,none", "--own", "magnitude_l1=track,random=none", "--speedups", "2",
            "--seeds", "0", "--out", str(tmp_path / "out"), "--no-models", "--runner", "inprocess"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    store = Store.load(tmp_path / "out")
    records = list(store.records.values())
    assert {(r.method.id, r.recipe) for r in records} == set(
        itertools.product(["magnitude_l1", "random"], [None, "none"]))
    assert len(records) == 4
    by = {(r.method.id, r.recipe): r for r in records}
    for m in ("magnitude_l1", "random"):  # the recipe really was applied: without retraining, final == pruned
        assert by[(m, "none")].metric.final == by[(m, "none")].metric.pruned
        assert by[(m, None)].metric.final > by[(m, None)].metric.pruned
    report = swap.analyse(records, ["magnitude_l1", "random"], ["track", "none"], 2.0,
                          own={"magnitude_l1": "track", "random": "none"})
    assert swap.markdown(report) in res.output
    assert "retrain none" in res.output
    again = CliRunner().invoke(app, args)  # resumable like any sweep
    assert again.exit_code == 0 and "skipped 4" in again.output


@pytest.mark.parametrize("extra, message", [
    (["--recipes", "track,nope"], "has no retraining recipe 'nope'"),
    (["--recipes", "track"], "give at least two"),
    (["--recipes", "track,track2", "--methods", "random"], "at least two methods"),
])
def test_recipe_swap_rejects_bad_input(tiny_track_file, tmp_path, extra, message):
    args = ["recipe-swap", "--track", str(tiny_track_file), "--methods", "magnitude_l1,random",
            "--out", str(tmp_path), *extra]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 2 and message in res.output, res.output
    assert not list(tmp_path.iterdir())


def test_winners_within_seed_noise_are_marked():
    records = [record("A", "x", 80 + d, seed=s) for s, d in enumerate((0, 1, 0.5))] + \
              [record("B", "x", 70 + d, seed=s) for s, d in enumerate((0, 1.2, 0.4))] + \
              [record("A", None, 90 + d, seed=s) for s, d in enumerate((0, 4, -3))] + \
              [record("B", None, 89 + d, seed=s) for s, d in enumerate((2, -2, 1))]
    report = swap.analyse(records, ["A", "B"], ["x", "track"], 2.0)
    assert report.pairs[0].within_noise == {"track"}  # 10 points apart with paired seeds vs 0.67 in the noise
    text = swap.markdown(report)
    assert "| A | B | A | A* | yes |" in text and "not significantly different at the 5% level" in text


def test_reports_per_base_checkpoint():
    other = [r.model_copy(update={"provenance": r.provenance.model_copy(update={"checkpoint_sha256": "b" * 64}),
                                  "run_key": r.run_key + "b"}) for r in (record("A", "x", 10), record("B", "x", 99))]
    mine = [record("A", "x", 80), record("B", "x", 70)]
    with pytest.raises(ValueError, match="2 base checkpoints"):
        swap.analyse(mine + other, ["A", "B"], ["x"], 2.0)
    reports = swap.analyse_sections(mine + other, ["A", "B"], ["x"], 2.0)
    assert [r.rankings["x"] for r in reports] == [["A", "B"], ["B", "A"]]  # never pooled
    assert "base bbbbbbbbbbbb" in swap.markdown(reports[1])
