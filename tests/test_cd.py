"""The Average view as a critical-difference analysis (harness.views.cd): Friedman and Nemenyi against scipy,
scikit-posthocs and Demšar (2006); the control comparisons and the power against hand computations; separation
where one method wins every block, none (at the 5% rate) on records drawn from one distribution; the JSON of the
CLI and of the platform; ``sweep --dry-run --target-difference``; the diagram; a finished run's page."""

from __future__ import annotations

import json
import math
import shutil
import xml.etree.ElementTree as ET

import numpy as np
import pytest
from fastapi.testclient import TestClient
from scipy import stats as sp
from typer.testing import CliRunner

from harness.cli import app
from harness.docs import DIGITS_RESULTS, figures
from harness.store import Store
from harness.views import cd
from harness.views import leaderboard as lb
from harness.views.diagram import cd_diagram

#: Demšar (2006), Table 5(a): Nemenyi's q_0.05 for k = 2 ... 10 classifiers
DEMSAR_Q05 = [1.960, 2.343, 2.569, 2.728, 2.850, 2.949, 3.031, 3.102, 3.164]


@pytest.fixture(scope="module")
def digits():
    records = list(Store.load(DIGITS_RESULTS).records.values())
    return records, lb.rows(records)


def _blocks(x: np.ndarray) -> dict:
    """A blocks x methods matrix as ``analyse`` takes it: block -> method -> value."""
    return {(b,): {f"m{j}": float(v) for j, v in enumerate(row)} for b, row in enumerate(x)}


@pytest.mark.parametrize("k", range(2, 11))
def test_critical_value_equals_demsars_table(k):
    assert cd.q_alpha(k) == pytest.approx(DEMSAR_Q05[k - 2], abs=1e-3)  # the table rounds to 3 decimals


def test_critical_difference_of_demsars_worked_example():
    # four C4.5 variants on 14 data sets: "CD = 2.569 sqrt(4·5 / (6·14)) = 1.25"
    assert cd.critical_difference(4, 14) == pytest.approx(2.569 * math.sqrt(20 / 84), abs=1e-3)
    assert round(cd.critical_difference(4, 14), 2) == 1.25
    # and Demšar's Friedman statistic from the example's mean ranks (no ties): 9.28
    r = np.array([3.143, 2.000, 2.893, 1.964])
    assert 12 * 14 / (4 * 5) * (np.sum(r ** 2) - 4 * 25 / 4) == pytest.approx(9.28, abs=0.01)


def test_friedman_and_nemenyi_equal_scipy_and_scikit_posthocs():
    import scikit_posthocs
    rng = np.random.default_rng(7)
    x = rng.normal(size=(12, 6)) + np.linspace(0, 1.5, 6)  # method j is j/4 better on average: no ties
    a = cd.analyse(_blocks(x))
    res = sp.friedmanchisquare(*x.T)
    assert (a.friedman_statistic, a.friedman_p) == (pytest.approx(res.statistic), pytest.approx(res.pvalue))
    ranks = np.vstack([sp.rankdata(-row) for row in x]).mean(axis=0)  # 1 = the highest value
    assert [a.mean_ranks[f"m{j}"] for j in range(6)] == pytest.approx(ranks)
    n, k = x.shape
    demsar = 12 * n / (k * (k + 1)) * (np.sum(ranks ** 2) - k * (k + 1) ** 2 / 4)  # no ties: equal
    assert a.friedman_statistic == pytest.approx(demsar)
    assert a.critical_difference == pytest.approx(DEMSAR_Q05[k - 2] * math.sqrt(k * (k + 1) / (6 * n)), abs=1e-3)
    p = scikit_posthocs.posthoc_nemenyi_friedman(x).to_numpy()
    assert a.rejects
    for i in range(k):
        for j in range(k):
            if i != j:
                assert a.nemenyi_p[f"m{i}", f"m{j}"] == pytest.approx(p[i, j])
                # the critical difference and scikit-posthocs' p-values tell the same pairs apart
                assert a.differs(f"m{i}", f"m{j}") == (p[i, j] < 0.05)
    assert ("m5", "m0") in a.separated()


def test_a_method_better_in_every_block_is_separated():
    rng = np.random.default_rng(0)
    x = rng.normal(97, 1, size=(9, 17))  # 17 methods, 9 blocks (3 speedups x 3 seeds), like the digits track
    x[:, 3] = x.max(axis=1) + 0.3       # m3 wins every block
    a = cd.analyse(_blocks(x))
    assert a.rejects and a.names[0] == "m3" and a.mean_ranks["m3"] == 1.0
    worse = a.better_than("m3")
    assert worse == [n for n in a.names if a.mean_ranks[n] - 1.0 > a.critical_difference]
    assert len(worse) >= 5  # every method further than CD = 8.23 below it
    assert all(not a.differs(u, v) for u in a.names[1:] for v in a.names[1:])  # the noise is not separated


def test_one_distribution_is_separated_at_most_at_the_5_percent_rate():
    rng = np.random.default_rng(2024)
    draws, friedman, any_pair = 200, 0, 0
    for _ in range(draws):
        # 8 methods, 9 blocks; the metric counts whole test images (steps of 0.28 points): ties happen
        x = np.round(rng.normal(97, 1, size=(9, 8)) / 0.28) * 0.28
        a = cd.analyse(_blocks(x))
        friedman += a.rejects
        any_pair += bool(a.separated())
    # binomial(200, 0.05): mean 10, sd 3.1
    assert friedman <= 20, friedman
    assert any_pair <= friedman and any_pair <= 20, any_pair


def test_control_comparisons_equal_a_hand_computation():
    control = {0: 90.0, 1: 91.0, 2: 89.5}
    a = {0: 92.0, 1: 93.5, 2: 91.0}     # +2.0, +2.5, +1.5
    b = {0: 89.0, 1: 91.5, 2: 88.0}     # -1.0, +0.5, -1.5
    tests = {t.name: t for t in cd.control_tests({"random": control, "a": a, "b": b})}
    by_hand = {}
    for name, values in (("a", a), ("b", b)):
        d = [values[s] - control[s] for s in range(3)]
        mean = sum(d) / 3
        sd = math.sqrt(sum((x - mean) ** 2 for x in d) / 2)
        t = mean / (sd / math.sqrt(3))
        by_hand[name] = (mean, 2 * sp.t.sf(abs(t), 2))
    (p_small, first), (p_large, second) = sorted((p, n) for n, (_, p) in by_hand.items())
    holm = {first: min(1, 2 * p_small), second: min(1, max(2 * p_small, p_large))}  # Holm over k - 1 = 2
    for name in ("a", "b"):
        assert tests[name].diff == pytest.approx(by_hand[name][0])
        assert tests[name].p == pytest.approx(by_hand[name][1])
        assert tests[name].p_adjusted == pytest.approx(holm[name])
        assert tests[name].test == "paired t" and tests[name].control == "random"
    assert cd.control_tests({"a": a}, "random") == []


def _power_by_hand(diff: float, sd: float, n: int, alpha: float) -> float:
    """The power of the two-sided paired t-test from its definition: with Z normal and V chi-square (n - 1 df),
    T' = (Z + δ√n) / √(V / (n - 1)) rejects beyond ±t_crit; integrated over V (scipy's quad), not from nct."""
    from scipy import integrate
    df, nc = n - 1, diff / sd * math.sqrt(n)
    crit = sp.t.ppf(1 - alpha / 2, df)

    def rejects(v: float) -> float:
        c = crit * math.sqrt(v / df)
        return (sp.norm.sf(c - nc) + sp.norm.cdf(-c - nc)) * sp.chi2.pdf(v, df)

    return integrate.quad(rejects, 0, math.inf, limit=200)[0]


@pytest.mark.parametrize("n,comparisons", [(3, 16), (5, 1), (10, 4), (30, 16)])
def test_minimum_detectable_difference_has_80_percent_power(n, comparisons):
    sd = 0.9
    mdd = cd.minimum_detectable_difference(sd, n, comparisons)
    assert _power_by_hand(mdd, sd, n, 0.05 / comparisons) == pytest.approx(0.8, abs=1e-6)
    assert _power_by_hand(0.9 * mdd, sd, n, 0.05 / comparisons) < 0.8  # the smallest such difference


def test_minimum_detectable_difference_approaches_the_normal_formula():
    n, sd = 400, 1.3
    z = sp.norm.ppf(1 - 0.025) + sp.norm.ppf(0.8)
    assert cd.minimum_detectable_difference(sd, n) == pytest.approx(z * sd / math.sqrt(n), rel=5e-3)
    assert cd.minimum_detectable_difference(sd, 1) is None


@pytest.mark.parametrize("sd,difference,comparisons", [(0.56, 1.0, 16), (1.0, 1.0, 16), (2.0, 0.5, 1)])
def test_seeds_needed_is_the_smallest_n_with_the_power(sd, difference, comparisons):
    n = cd.seeds_needed(sd, difference, comparisons)
    alpha = 0.05 / comparisons
    assert _power_by_hand(difference, sd, n, alpha) >= 0.8 - 1e-6
    assert n == 2 or _power_by_hand(difference, sd, n - 1, alpha) < 0.8


def test_the_digits_average_view(digits):
    """The committed records: the Friedman statistic from scipy on the raw finals, blocks (speedup, seed)."""
    records, rows = digits
    a = lb.analysis(rows, "final")
    names = sorted({lb.run_name(r) for r in records})
    blocks = sorted({(r.speedup.target, r.seed) for r in records})
    value = {(lb.run_name(r), r.speedup.target, r.seed): r.metric.final for r in records}
    x = np.array([[value[(n, *b)] for n in names] for b in blocks])
    res = sp.friedmanchisquare(*x.T)
    assert (a.friedman_statistic, a.friedman_p, a.n_blocks, a.k) == (pytest.approx(res.statistic),
                                                                    pytest.approx(res.pvalue), 9, 17)
    assert a.critical_difference == pytest.approx(cd.critical_difference(17, 9))
    assert a.rejects and a.names[0] == "bn_scale" and ("bn_scale", "magnitude_l2") in a.separated()
    recal = lb.analysis(rows, "pruned_recal")
    assert recal.rejects and recal.names[0] == "thinet" and ("thinet", "lamp") in recal.separated()
    # the per-cell comparisons with the control and the power lines
    tests = lb.control_cells(rows, "pruned_recal")
    assert {t for t in tests} == {2.0, 4.0, 8.0} and all(len(ts) == 16 for ts in tests.values())
    assert min(t.p for t in tests[4.0]) == pytest.approx(0.013, abs=5e-4)
    power = lb.power_cells(rows, "final")
    assert all(p.n == 3 and p.comparisons == 16 and p.mdd > p.sd for p in power.values())


def test_leaderboard_json_carries_the_analysis(digits):
    res = CliRunner().invoke(app, ["leaderboard", str(DIGITS_RESULTS), "--format", "json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    [section] = data["sections"]
    avg = section["average"]
    a = lb.analysis(digits[1], "final")
    assert avg["friedman"] == {"statistic": pytest.approx(a.friedman_statistic), "p": pytest.approx(a.friedman_p)}
    assert avg["critical_difference"] == pytest.approx(a.critical_difference)
    assert {r["name"]: r["mean_rank"] for r in avg["rows"]} == pytest.approx(a.mean_ranks)
    assert avg["pruned_recal"]["friedman"]["p"] < 1e-6 and section["control"] == "random"
    assert len(section["cells"]) == 51 and data["across_tracks"] == {"final": None, "pruned_recal": None}
    from harness.views.site import leaderboard_page  # the static site's Average view: both diagrams, inline
    page = leaderboard_page(digits[0])
    assert page.count('<g class="cdd">') == 2 and "Friedman χ² = 54.8" in page and "CD = 8.23" in page


def test_platform_average_view_carries_the_analysis(digits, tmp_path):
    from harness.web.app import create_app
    from harness.web.config import ServerConfig
    shutil.copytree(DIGITS_RESULTS, tmp_path / "s" / "digits-resnet18")
    client = TestClient(create_app(ServerConfig(store=tmp_path / "s"), start_queue=False),
                        base_url="http://127.0.0.1:8000")
    with client:
        [section] = client.get("/api/leaderboards/digits-resnet18", params={"view": "average"}).json()["sections"]
        a = lb.analysis(digits[1], "final")
        assert section["friedman"]["p"] == pytest.approx(a.friedman_p)
        assert section["critical_difference"] == pytest.approx(a.critical_difference)
        assert [(e["name"], e["mean_rank"]) for e in section["average"]] == [
            (n, pytest.approx(a.mean_ranks[n])) for n in a.names]
        assert section["average"][0]["ahead_of"] == a.better_than("bn_scale")
        assert section["analysis_pruned_recal"]["mean_rank"]["thinet"] == pytest.approx(3.44, abs=0.01)
        [bn] = [t for t in lb.control_cells(digits[1], "final")[2.0] if t.name == "bn_scale"]
        assert section["average"][0]["versus_control"]["2x"] == {
            "diff": pytest.approx(bn.diff), "p": pytest.approx(bn.p), "p_holm": pytest.approx(bn.p_adjusted),
            "significant": False, "test": "paired t"}
        assert [e["versus_control"]["2x"] for e in section["average"] if e["name"] == "random"] == [None]
        assert len(section["power"]) == 3 and section["control"] == "random"
        page = client.get("/tracks/digits-resnet18").text
        assert page.count('<g class="cdd">') == 2 and "CD = 8.23" in page and "cdn" not in page.lower()
        assert "grey: 12 others" in page  # the five best mean ranks in colour
        # a finished run's page: progress and accuracy from the record, even without events
        record = digits[0][0]
        run = client.get(f"/runs/{record.run_key}").text
        metrics = run[run.index('id="metrics"'):run.index("<h3>Pruning probes")]
        assert f"{record.metric.final:.2f}" in metrics and f"{record.metric.pruned_recal:.2f}" in metrics
        stages = run[run.index('id="stages"'):run.index("<h3>Accuracy")]
        assert "waiting for events" not in stages and "retrain" in stages


def test_target_difference_gives_the_seeds_each_cell_needs(digits, tmp_path):
    args = ["sweep", "--track", "digits-resnet18", "--dry-run", "--target-difference", "1.0"]
    res = CliRunner().invoke(app, args + ["--out", str(DIGITS_RESULTS)])
    assert res.exit_code == 0, res.output
    power = lb.power_cells(digits[1], "final")
    for speedup, p in power.items():
        need = cd.seeds_needed(p.sd, 1.0, 16)
        assert f"| {speedup:g}x | Final | {p.sd:.2f} | 3 | {p.mdd:.2f} | {need} |" in res.output
    with pytest.raises(ValueError, match="no cell has two seeds"):  # the CLI: one line, exit 2
        lb.seeds_needed([r for r in digits[0] if r.seed == 0], 1.0)
    alone = ["sweep", "--track", "digits-resnet18", "--target-difference", "1.0", "--out", str(tmp_path)]
    assert CliRunner().invoke(app, alone).exit_code == 2  # it needs --dry-run
    zero = CliRunner().invoke(app, args[:-1] + ["0", "--out", str(DIGITS_RESULTS)])
    assert zero.exit_code == 2 and "must be a finite number > 0" in zero.output


def test_the_diagram_is_one_standalone_svg():
    ranks = {"a": 1.5, "b": 2.2, "c & d": 3.9, "e": 4.4}
    svg = cd_diagram(ranks, 1.25, [["a", "b"], ["c & d", "e"]], "title <x>")
    root = ET.fromstring(svg)  # well-formed, escaped
    assert root.tag.endswith("svg") and "http" not in svg.replace("http://www.w3.org/2000/svg", "")
    texts = ["".join(t.itertext()) for t in root.iter("{http://www.w3.org/2000/svg}text")]
    assert {f"{n} ({r:.2f})" for n, r in ranks.items()} <= set(texts)
    assert "CD = 1.25" in texts and "title <x>" in texts
    bars = [t for t in root.iter("{http://www.w3.org/2000/svg}title") if t.text.startswith("not separated")]
    assert len(bars) == 2


def test_the_readme_figures_are_generated():
    for path, text in figures().items():
        assert path.read_text() == text, f"{path} is stale: run `python -m harness.docs`"
    assert len(figures()) == 2


def test_across_tracks_pools_the_blocks_of_the_methods_every_track_ran(digits):
    records, _ = digits
    # a second track with 5 of the 17 rows, its metric on another scale: ranks do not care
    five = {"bn_scale", "fpgm", "lamp", "random", "thinet"}
    other = [r.model_copy(update={"track": r.track.model_copy(update={"id": "other", "hash": "1" * 64}),
                                  "metric": r.metric.model_copy(update={"final": r.metric.final / 100})})
             for r in records if lb.run_name(r) in five]
    rows = lb.rows(records + other)
    a = lb.across_tracks(rows, "final")
    assert a.n_blocks == 18 and set(a.names) == five
    value = {(r.track.id, lb.run_name(r), r.speedup.target, r.seed): r.metric.final for r in records + other}
    blocks = sorted({k[:1] + k[2:] for k in value})
    x = np.array([[value[(b[0], n, *b[1:])] for n in sorted(five)] for b in blocks])
    assert a.friedman_statistic == pytest.approx(sp.friedmanchisquare(*x.T).statistic)
    assert "Across tracks" in lb.markdown(rows) and lb.across_tracks(lb.rows(records), "final") is None


# ------------------------------------------------------------------------------------ the review's attacks

def _synthetic(template, method, seed, speedup, final, recal=50.0, status="ok", version=None, track=None,
               strategy=None, base=None):
    """A copy of a committed record with the given method, seed, speedup and metrics (cheap: no training)."""
    metric = template.metric.model_copy(update={"final": final if status == "ok" else None, "pruned_recal": recal})
    m = template.method.model_copy(update={"id": method, "hyperparameters": {},
                                           **({"version": version} if version else {})})
    update = {"method": m, "regularizer": None, "seed": seed, "metric": metric, "status": status,
              "error": None if status == "ok" else "oom", "speedup": template.speedup.model_copy(
                  update={"target": speedup}), "run_key": f"{method}-{version}-{seed}-{speedup}-{track}-{strategy}"}
    if track:
        update["track"] = template.track.model_copy(update={"id": track, "hash": "1" * 64})
    if strategy:
        update["strategy"] = strategy
    if base:
        update["provenance"] = template.provenance.model_copy(update={"checkpoint_sha256": base})
    return template.model_copy(update=update)


def test_failed_runs_leave_out_methods_not_every_block(digits):
    """Each of three methods fails a different seed: no block is complete, yet the Average view keeps the blocks
    and leaves out the fewest methods, saying so (it used to say "0 methods over 0 blocks")."""
    t = digits[0][0]
    rng = np.random.default_rng(2)
    recs = [_synthetic(t, m, s, sp, 90 + 2 * i + rng.random(), status="failed" if i and s == i - 1 else "ok")
            for i, m in enumerate(["random", "a", "b", "c"]) for s in range(3) for sp in (2.0, 4.0)]
    rows = lb.rows(recs)
    a = lb.analysis(rows, "final")
    assert a.k == 3 and a.n_blocks == 2 and len(a.incomplete) == 1 and list(a.incomplete.values()) == [2]
    line = lb.analysis_line(a)
    assert "3 methods, 2 blocks" in line and "2 blocks missing" in line and "no ok run" not in line
    # one failed run among many methods: only that method goes, every block stays
    recs = [_synthetic(t, m, s, sp, 90 + i + rng.random(), status="failed" if (m, s, sp) == ("e", 1, 2.0) else "ok")
            for i, m in enumerate("abcdef") for s in range(3) for sp in (2.0, 4.0)]
    a = lb.analysis(lb.rows(recs), "final")
    assert (a.k, a.n_blocks, a.incomplete) == (5, 6, {"e": 1})
    # a method without any ok run at a speedup is left out for that reason
    a = lb.analysis(lb.rows([r for r in recs if not (r.method.id == "f" and r.speedup.target == 4.0)]), "final")
    assert a.excluded == ["f"] and "no ok run at some speedup): f" in lb.analysis_line(a)
    assert "0 methods" not in lb.analysis_line(cd.analyse({(1,): {}}, "final"))


def test_versions_of_one_method_are_separate_rows_and_duplicate_seeds_count_once(digits):
    t = digits[0][0]
    recs = [_synthetic(t, m, s, 2.0, {"random": 90.0, "b": 91.0}[m] + 0.1 * s) for m in ("random", "b")
            for s in range(3)]
    recs += [_synthetic(t, "a", s, 2.0, final + 0.1 * s, version=v) for s in range(3)
             for v, final in (("1.0.0", 99.0), ("2.0.0", 80.0))]
    for order in (recs, recs[::-1]):  # the store's order changes nothing
        rows = {r.name: r for r in lb.rows(order)}
        assert set(rows) == {"random", "b", "a@1.0.0", "a@2.0.0"}
        assert rows["a@1.0.0"].final.n == 3 and rows["a@1.0.0"].final.mean == pytest.approx(99.1)
        assert rows["a@2.0.0"].finals == {0: 80.0, 1: 80.1, 2: pytest.approx(80.2)}
    # the same version run twice for one seed (two run keys): counted once, with a one-line warning
    again = recs + [_synthetic(t, "b", 0, 2.0, 70.0).model_copy(update={"run_key": "zz-rerun"})]
    [b] = [r for r in lb.rows(again) if r.name == "b"]
    assert b.final.n == 3 and b.finals[0] == 91.0
    [w] = lb.warnings(again)
    assert "2 ok runs of seed 0" in w and "only the first is counted" in w


def test_across_tracks_never_pools_sections_of_one_track(digits):
    t = digits[0][0]
    rng = np.random.default_rng(3)
    recs = [_synthetic(t, m, s, sp, 90 + rng.random(), strategy=st) for st in ("protected_global", "local")
            for m in ("random", "a", "b") for s in range(3) for sp in (2.0, 4.0)]
    assert lb.across_tracks(lb.rows(recs)) is None  # two strategies of one track
    bases = [r if r.strategy == "local" else r.model_copy(update={"strategy": "local", "provenance":
             r.provenance.model_copy(update={"checkpoint_sha256": "ab" * 32})}) for r in recs]
    assert lb.across_tracks(lb.rows(bases)) is None  # two base checkpoints of one track
    other = [_synthetic(t, m, s, sp, 0.5 + rng.random(), track="other") for m in ("random", "a", "b")
             for s in range(3) for sp in (2.0, 4.0)]
    a = lb.across_tracks(lb.rows(recs + other))
    assert a.n_blocks == 12 and {b[0] for b in a.blocks} == {"digits-resnet18", "other"}  # one section per track


def test_non_finite_metrics_are_refused_and_never_break_a_view(digits, tmp_path):
    from pydantic import ValidationError

    from harness.web.app import create_app
    from harness.web.config import ServerConfig
    t = digits[0][0]
    for bad in (math.nan, math.inf, -math.inf):
        with pytest.raises(ValidationError, match="finite"):
            type(t).model_validate({**t.model_dump(), "metric": {**t.metric.model_dump(), "final": bad}})
    store = tmp_path / "s" / "digits-resnet18"
    recs = [_synthetic(t, m, s, sp, 90.0 + i + 0.3 * s) for i, m in enumerate(("random", "a", "b"))
            for s in range(3) for sp in (2.0, 4.0)]
    for i, r in enumerate(recs):
        (store / f"run{i}").mkdir(parents=True)
        text = r.model_dump_json()
        if i == 0:
            text = text.replace(f'"final":{r.metric.final}', '"final":NaN')
        (store / f"run{i}" / "result.json").write_text(text)
    loaded = Store.load(tmp_path / "s")
    assert len(loaded.records) == len(recs) - 1 and "finite" in loaded.invalid[0]
    with TestClient(create_app(ServerConfig(store=tmp_path / "s"), start_queue=False),
                    base_url="http://127.0.0.1:8000") as client:
        assert client.get("/api/leaderboards/digits-resnet18", params={"view": "average"}).status_code == 200
        assert client.get("/").status_code == 200 and client.get("/tracks/digits-resnet18").status_code == 200
    # values that arrive anyway (not validated): inf and ±1e308 count as missing, no OverflowError
    odd = [r.model_copy(update={"metric": r.metric.model_copy(update={"final": v})})
           for r, v in zip(recs[:3], (math.inf, 1e308, -1e308))] + recs[3:]
    rows = lb.rows(odd)
    json.dumps(lb.to_json(rows), allow_nan=False)
    assert "Final" in lb.markdown(rows) and sum(r.final.n for r in rows) == len(recs) - 3


def test_the_index_names_a_leader_only_when_the_critical_difference_separates_it(digits, tmp_path):
    from harness.web.boards import board, leaders
    t = digits[0][0]
    rng = np.random.default_rng(4)
    noise = [_synthetic(t, m, s, sp, 90 + rng.random()) for m in ("random", "a", "b", "c") for s in range(3)
             for sp in (2.0, 4.0)]
    equal = [r.model_copy(update={"metric": r.metric.model_copy(update={"final": 90.0})}) for r in noise]
    two = [r for r in noise if r.method.id in ("random", "a")]
    for recs in (noise, equal, two, [r for r in noise if r.method.id == "a"]):
        assert leaders(board(recs, "digits-resnet18")) == []
    assert [a.name for a in leaders(board(digits[0], "digits-resnet18"))] == ["bn_scale"]


def test_no_spread_is_unmeasured_and_power_describes_the_test_that_runs(digits):
    t = digits[0][0]
    # every seed gives the same difference to the control: the paired test cannot run (Welch does), so no power
    same = [_synthetic(t, m, s, 2.0, 90 + s + {"random": 0, "a": 1, "b": 2}[m]) for m in ("random", "a", "b")
            for s in range(3)]
    rows = lb.rows(same)
    [p] = lb.power_cells(rows, "final").values()
    assert (p.sd, p.mdd, p.paired) == (None, None, True)
    assert [c.test for c in lb.control_cells(rows, "final")[2.0]] == ["Welch t", "Welch t"]
    assert "do not spread" in lb.power_line(rows, "final")
    with pytest.raises(ValueError, match="do not spread"):
        lb.seeds_needed(same, 1.0)
    assert cd.minimum_detectable_difference(0.0, 3) is None
    with pytest.raises(ValueError, match="must be > 0"):
        cd.seeds_needed(0.0, 1.0)
    # seeds that do not pair with the control's: Welch runs, so they do not enter the paired test's spread
    rng = np.random.default_rng(5)
    mixed = [_synthetic(t, m, s, 2.0, 90 + rng.random()) for m, seeds in (("random", (0, 1, 2)), ("a", (0, 1, 2)),
                                                                        ("b", (0, 1, 3))) for s in seeds]
    samples = {r.name: r.finals for r in lb.rows(mixed)}
    sd, n = cd.difference_sd(samples)
    d = [samples["a"][s] - samples["random"][s] for s in range(3)]
    assert (sd, n) == (pytest.approx(np.std(d, ddof=1)), 3)


def test_target_difference_per_cell_beyond_the_search_and_huge_differences(digits):
    sd = 8.69
    assert cd.seeds_needed(sd, 1e300, 16) == 2 and cd.power(1e300, 3, 16) == 1.0  # scipy's NaN tail counts 1
    assert cd.seeds_needed(sd, 0.1, 16) is None and cd.fmt_seeds(None) == ">100000"
    for bad in (math.inf, math.nan, -1.0):
        with pytest.raises(ValueError, match="finite number > 0"):
            cd.seeds_needed(sd, bad)
    table = lb.seeds_needed(digits[0], 0.1)  # some cells need more than the search: each says so, none aborts
    assert table.count(">100000 |") >= 1 and table.count("| Final |") == 3
    args = ["sweep", "--track", "digits-resnet18", "--dry-run", "--target-difference"]
    res = CliRunner().invoke(app, args + ["inf", "--out", str(DIGITS_RESULTS)])
    assert res.exit_code == 2 and "finite number > 0" in res.output and "Traceback" not in res.output


def test_a_missing_control_and_one_seed_cells_say_so(digits):
    t = digits[0][0]
    rng = np.random.default_rng(6)
    recs = [_synthetic(t, m, s, sp, 90 + rng.random()) for m in ("a", "b", "c") for s in range(3)
            for sp in (2.0, 4.0)]
    rows = lb.rows(recs)
    assert "the control random has no ok run in this section" in lb.power_line(rows, "final")
    one = lb.rows([r for r in recs + [_synthetic(t, "random", 0, 2.0, 90.0)] if r.seed == 0])
    [a] = [x for x in lb.average(one) if x.name == "a"]
    assert lb._versus(a.versus_control[2.0]).endswith("(no test)")


def test_long_names_stay_inside_the_diagram_and_counts_are_singular():
    long = "x" * 300
    svg = cd_diagram({long: 1.0, "b": 2.0}, None, [])
    texts = ["".join(t.itertext()) for t in ET.fromstring(svg).iter("{http://www.w3.org/2000/svg}text")]
    assert max(map(len, texts)) < 40 and f"{long}: mean rank 1.00" in svg  # the full name in the tooltip
    a = cd.analyse({(1,): {"a": 1.0}}, "final")
    assert "1 method over 1 block " in lb.analysis_line(a)


def test_the_platform_says_no_test_and_names_a_missing_control(digits, tmp_path):
    from harness.web.app import create_app
    from harness.web.config import ServerConfig
    t = digits[0][0]
    one_seed = [_synthetic(t, m, 0, sp, 90.0 + i) for i, m in enumerate(("random", "a", "b")) for sp in (2.0, 4.0)]
    no_control = [_synthetic(t, m, s, 2.0, 90.0 + i + 0.1 * s * i, track="other") for i, m in
                  enumerate(("a", "b", "c")) for s in range(2)]
    for i, r in enumerate(one_seed + no_control):
        (tmp_path / "s" / r.track.id / f"run{i}").mkdir(parents=True)
        (tmp_path / "s" / r.track.id / f"run{i}" / "result.json").write_text(r.model_dump_json())
    with TestClient(create_app(ServerConfig(store=tmp_path / "s"), start_queue=False),
                    base_url="http://127.0.0.1:8000") as client:
        one, none = client.get("/tracks/digits-resnet18").text, client.get("/tracks/other").text
    assert "(no test)" in one and "has no ok run in this section" not in one
    assert "The control random has no ok run in this section" in none
