"""harness.views.stats against scipy (confidence intervals, paired and Welch tests) and hand computations
(Holm, ranks with ties). The critical-difference Average view: tests/test_cd.py."""

from __future__ import annotations

import math

import pytest
from scipy import stats as sp

from harness.views import stats


def test_t_distribution_refuses_bad_arguments():
    # the distribution is scipy's (harness.views.stats wraps scipy.stats.t); what it refuses is ours
    for bad in (lambda: stats.t_sf(1.0, 0), lambda: stats.t_cdf(1.0, -1), lambda: stats.t_ppf(0.0, 3),
                lambda: stats.t_ppf(0.5, 0)):
        with pytest.raises(ValueError):
            bad()
    assert stats.t_ppf(0.975, 2) == pytest.approx(4.302652729911275)  # the 95% interval's factor at n = 3


@pytest.mark.filterwarnings("ignore:Precision loss:RuntimeWarning")
@pytest.mark.parametrize("xs", [[97.04, 96.2, 97.9], [1.0, 2.0], [5.5, 5.5, 5.5, 5.5], [3.1, -2.0, 7.7, 0.4, 9.9]])
def test_summary_and_ci_equal_scipy(xs):
    s = stats.summarize(xs)
    assert s.n == len(xs)
    assert s.mean == pytest.approx(sum(xs) / len(xs))
    assert s.std == pytest.approx(sp.tstd(xs), abs=1e-12)  # sample std (n - 1)
    low, high = sp.t.interval(0.95, len(xs) - 1, loc=sum(xs) / len(xs), scale=sp.sem(xs)) if s.std else (s.mean,) * 2
    assert (s.ci95_low, s.ci95_high) == (pytest.approx(low), pytest.approx(high))


def test_one_value_has_no_spread_and_prints_alone():
    s = stats.summarize([96.67, None])
    assert (s.n, s.mean, s.std, s.ci95_low, s.ci95_high) == (1, 96.67, None, None, None)
    assert stats.fmt(s) == "96.67" and "±" not in stats.fmt(s)
    assert stats.fmt(stats.summarize([])) == "n/a"
    assert stats.fmt(stats.summarize([1.0, 3.0])) == f"2.00 ± {sp.t.ppf(0.975, 1) * math.sqrt(2) / math.sqrt(2):.2f}"
    with pytest.raises(ValueError, match="NaN"):
        stats.summarize([1.0, float("nan")])


def test_paired_test_when_seeds_pair_equals_scipy():
    a = {0: 97.2, 1: 96.4, 2: 97.9, 3: 96.0}
    b = {0: 96.1, 1: 96.0, 2: 96.9, 3: 95.1}
    c = stats.compare(a, b, ("a", "b"))
    ref = sp.ttest_rel([a[s] for s in sorted(a)], [b[s] for s in sorted(b)])
    assert c.test == "paired t" and (c.a, c.b) == ("a", "b")
    assert c.statistic == pytest.approx(ref.statistic) and c.p == pytest.approx(ref.pvalue, rel=1e-9)
    assert c.df == 3 and c.diff == pytest.approx(0.85)


def test_welch_when_seeds_do_not_pair_equals_scipy():
    a = {0: 97.2, 1: 96.4, 2: 97.9}
    b = {0: 95.1, 1: 96.0, 5: 96.9, 6: 94.2}
    c = stats.compare(a, b)
    ref = sp.ttest_ind(list(a.values()), list(b.values()), equal_var=False)
    assert c.test == "Welch t"
    assert c.statistic == pytest.approx(ref.statistic) and c.p == pytest.approx(ref.pvalue, rel=1e-9)
    assert c.df == pytest.approx(ref.df)


@pytest.mark.filterwarnings("ignore:Precision loss:RuntimeWarning")
def test_no_test_with_one_seed_and_degenerate_spreads():
    assert stats.compare({0: 99.0}, {0: 10.0}).test == "none"
    assert stats.compare({0: 99.0}, {0: 10.0}).p == 1.0  # one seed never separates anything
    same = stats.compare({0: 1.0, 1: 2.0}, {0: 1.0, 1: 2.0})
    assert same.p == 1.0 and same.diff == 0
    # equal per-seed differences (one test image each time: 97.78 vs 97.5, ...): scipy's paired test says
    # t = inf, p = 0 (or t ~ 1e14 from rounding); no variance estimate, so Welch's on the same values instead
    a, b = {0: 97.5 + 1 / 3.6, 1: 96.9444 + 1 / 3.6, 2: 98.0556 + 1 / 3.6}, {0: 97.5, 1: 96.9444, 2: 98.0556}
    assert sp.ttest_rel(list(a.values()), list(b.values())).pvalue < 1e-10
    c = stats.compare(a, b)
    ref = sp.ttest_ind(list(a.values()), list(b.values()), equal_var=False)
    assert c.test == "Welch t" and c.p == pytest.approx(ref.pvalue, rel=1e-9) and c.p > 0.5
    assert stats.compare({0: 96.11, 1: 96.11}, {0: 96.39, 1: 96.39}).test == "none"  # no spread anywhere


def test_holm_by_hand():
    # m = 4: sorted 0.01, 0.02, 0.03, 0.04 -> 0.04, 0.06, 0.06 (running max of 0.06), 0.06 (cap by max)
    assert stats.holm([0.03, 0.01, 0.04, 0.02]) == pytest.approx([0.06, 0.04, 0.06, 0.06])
    assert stats.holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])
    assert stats.holm([]) == []


def _ranks_by_hand(samples, alpha=0.05):
    """Independent reference: scipy's paired/Welch tests, Holm over all pairs, rank = 1 + #significantly better."""
    names = list(samples)
    pairs, ps = [], []
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            xa, xb = samples[a], samples[b]
            if set(xa) == set(xb):
                p = sp.ttest_rel([xa[s] for s in sorted(xa)], [xb[s] for s in sorted(xa)]).pvalue
            else:
                p = sp.ttest_ind(list(xa.values()), list(xb.values()), equal_var=False).pvalue
            pairs.append((a, b))
            ps.append(p)
    m = len(ps)
    order = sorted(range(m), key=lambda i: ps[i])
    reject = [False] * m
    for k, i in enumerate(order):  # Holm's step-down: stop at the first non-rejection
        if ps[i] >= alpha / (m - k):
            break
        reject[i] = True
    better = {n: 0 for n in names}
    mean = {n: sum(v.values()) / len(v) for n, v in samples.items()}
    for (a, b), r in zip(pairs, reject):
        if r:
            better[b if mean[a] > mean[b] else a] += 1
    return {n: 1 + better[n] for n in names}


def test_ranks_with_ties_equal_a_scipy_reference():
    seeds = range(5)
    samples = {  # two clearly better methods, two in the middle that no test separates, one clearly worse
        "lamp": dict(zip(seeds, [97.1, 97.5, 97.3, 97.0, 97.6])),
        "taylor": dict(zip(seeds, [97.2, 97.4, 97.1, 97.3, 97.5])),
        "fpgm": dict(zip(seeds, [95.0, 95.9, 94.6, 95.4, 95.2])),
        "l1": dict(zip(seeds, [95.1, 95.3, 95.8, 94.9, 95.0])),
        "random": dict(zip(seeds, [90.0, 91.2, 89.5, 90.4, 90.9])),
    }
    ranking = stats.rank(samples)
    assert ranking.ranks == _ranks_by_hand(samples)
    assert ranking.ranks == {"lamp": 1, "taylor": 1, "fpgm": 3, "l1": 3, "random": 5}  # competition ranking
    assert ranking.order()[:2] == ["lamp", "taylor"]  # equal rank: by mean
    assert ranking.differs("lamp", "random") and not ranking.differs("fpgm", "l1")
    c = ranking.comparison("random", "lamp")
    assert c.diff < 0 and c.p_adjusted >= c.p


def test_noise_gives_one_shared_rank():
    """The issue's 8x table: every gap inside one standard deviation -> nobody is ranked above anybody."""
    samples = {"random": {0: 97.78, 1: 96.39, 2: 96.94}, "taylor": {0: 98.33, 1: 95.0, 2: 96.67},
               "lamp": {0: 96.94, 1: 96.67, 2: 96.39}, "fpgm": {0: 96.11, 1: 97.22, 2: 96.39},
               "magnitude_l2": {0: 96.67, 1: 96.39, 2: 96.39}}
    assert set(stats.rank(samples).ranks.values()) == {1}
    assert _ranks_by_hand(samples) == stats.rank(samples).ranks


def test_one_seed_ties_with_everything():
    ranking = stats.rank({"a": {0: 99.0}, "b": {0: 50.0}, "c": {}})
    assert ranking.ranks == {"a": 1, "b": 1}  # "c" has no value: not ranked


def test_lower_is_better():
    samples = {"a": {0: 1.0, 1: 1.1, 2: 0.9}, "b": {0: 5.0, 1: 5.2, 2: 4.9}}
    assert stats.rank(samples, higher_is_better=False).ranks == {"a": 1, "b": 2}
    assert stats.rank(samples).ranks == {"a": 2, "b": 1}


@pytest.mark.parametrize("x, y", [([1, 2, 3, 4], [1, 3, 2, 4]), ([1, 1, 2, 3], [2, 1, 3, 3]),
                                  ([4, 3, 2, 1, 0], [0, 1, 2, 3, 4]), ([5, 1, 4, 2, 3], [5, 2, 4, 1, 1]),
                                  ([35.3, 26.9, 35.3, 38.3, 45.6], [96.67, 95.56, 96.39, 96.94, 96.67])])
def test_rank_correlations_equal_scipy(x, y):
    assert stats.kendall_tau(x, y) == pytest.approx(sp.kendalltau(x, y).statistic)
    assert stats.spearman(x, y) == pytest.approx(sp.spearmanr(x, y).statistic)
    assert stats.spearman([1, 1, 1], [1, 2, 3]) is None  # a constant side has no ranking
