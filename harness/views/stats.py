"""Statistics for leaderboards: summaries over seeds, significance tests, rankings with ties.

A library of plain numbers in, plain numbers out (no torch), used by the leaderboard, the static site, the
recipe-swap report and the web platform. Distributions come from ``scipy.stats``, imported lazily so that
``pbench-harness --help`` stays fast.

- :func:`summarize`: n, mean, sample standard deviation (``n - 1`` in the denominator) and the 95%
  confidence interval of the mean from Student's t distribution (``mean ± t(0.975, n - 1) · std / √n``).
  With n = 1 there is no spread: ``std`` and the interval are ``None``, and :func:`fmt` prints the value
  alone, never "± 0.00".
- :func:`compare`: is one method's metric different from another's? Two-sided test at the seed level:
  the **paired t-test** on the per-seed differences when both were run with the same seeds (the same seed
  means the same calibration images and the same retraining order, so pairing removes that shared
  noise), else **Welch's t-test** (unequal variances). A test whose variance estimate is zero (up to
  rounding) is not used: with few seeds and a metric counted in whole test images, equal per-seed
  differences happen by chance, and t = ±inf would call them certain. The paired test then falls back to
  Welch's on the same values, and Welch's with no spread on either side to no test (p = 1).
- :func:`rank`: competition ranking with ties. All pairwise p-values within one leaderboard cell
  (one track, base checkpoint, speedup, strategy, recipe) are adjusted with **Holm's step-down
  correction** (family-wise error rate 5%); a method's rank is 1 + the number of methods that are
  significantly better than it. Methods that no test separates share a rank; a method with one seed
  can never be separated from anything (no test is possible), so it ties with every other.
- The Average view (each method over all of a track's speedups and seeds) is the critical-difference
  analysis of :mod:`harness.views.cd`.
- :func:`kendall_tau` (tau-b) and :func:`spearman`: rank agreement of two metrics (ties allowed).

The distribution functions (:func:`t_sf`, :func:`t_cdf`, :func:`t_ppf`) are scipy's Student t.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import Hashable, Iterable, Literal, Mapping, Optional, Sequence

ALPHA = 0.05
CONFIDENCE = 0.95

__all__ = ["ALPHA", "CONFIDENCE", "Comparison", "LARGEST", "Ranking", "Summary", "compare", "fmt", "holm",
           "kendall_tau", "no_spread", "rank", "spearman", "summarize", "t_cdf", "t_ppf", "t_sf", "usable"]


# ------------------------------------------------------------------------------------ Student's t

def t_sf(t: float, df: float) -> float:
    """Survival function P(T > t) of Student's t with ``df`` > 0 degrees of freedom (df may be fractional)."""
    if df <= 0:
        raise ValueError(f"degrees of freedom must be > 0, got {df}")
    from scipy.stats import t as student  # lazy: `pbench-harness --help` imports no scipy
    return float(student.sf(t, df))


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) of Student's t with ``df`` degrees of freedom."""
    if df <= 0:
        raise ValueError(f"degrees of freedom must be > 0, got {df}")
    from scipy.stats import t as student
    return float(student.cdf(t, df))


@functools.lru_cache(maxsize=1024)
def t_ppf(q: float, df: float) -> float:
    """Quantile of Student's t: the ``t`` with ``t_cdf(t, df) == q``, 0 < q < 1."""
    if not 0.0 < q < 1.0:
        raise ValueError(f"quantile level must be in (0, 1), got {q}")
    if df <= 0:
        raise ValueError(f"degrees of freedom must be > 0, got {df}")
    from scipy.stats import t as student
    return float(student.ppf(q, df))


# ------------------------------------------------------------------------------------ summaries

#: beyond this magnitude a metric (a percentage) is corrupt: squares and sums of such values overflow
LARGEST = 1e15


def usable(v: Optional[float]) -> Optional[float]:
    """``v`` when it is a number the statistics can use (finite, at most :data:`LARGEST` in magnitude), else
    ``None`` (missing). The result schema refuses non-finite metrics; this keeps the views whole if one arrives
    anyway."""
    return v if v is not None and math.isfinite(v) and abs(v) <= LARGEST else None


@dataclass(frozen=True)
class Summary:
    """One leaderboard number over seeds.

    ``std`` is the sample standard deviation; ``ci95_low``/``ci95_high`` bound the 95% confidence interval
    of the mean (Student's t with n - 1 degrees of freedom). ``std`` and the interval are ``None`` for
    n < 2; every field is ``None`` (and n = 0) when there is no value.
    """

    n: int
    mean: Optional[float] = None
    std: Optional[float] = None
    ci95_low: Optional[float] = None
    ci95_high: Optional[float] = None

    @property
    def half_width(self) -> Optional[float]:
        """Half the width of the 95% confidence interval (``None`` for n < 2)."""
        return None if self.ci95_high is None else (self.ci95_high - self.ci95_low) / 2


def summarize(values: Iterable[Optional[float]], confidence: float = CONFIDENCE) -> Summary:
    """Summary of the non-``None`` values (NaN is refused: a metric is a number or missing)."""
    xs = [float(v) for v in values if v is not None]
    if any(math.isnan(x) for x in xs):
        raise ValueError("summarize: NaN among the values; a missing value is None")
    n = len(xs)
    if n == 0:
        return Summary(0)
    mean = math.fsum(xs) / n
    if n == 1:
        return Summary(1, mean)
    std = math.sqrt(math.fsum((x - mean) ** 2 for x in xs) / (n - 1))
    half = t_ppf(0.5 + confidence / 2, n - 1) * std / math.sqrt(n)
    return Summary(n, mean, std, mean - half, mean + half)


def fmt(s: Summary, digits: int = 2, spread: Literal["ci", "std"] = "ci") -> str:
    """``mean ± half-width of the 95% CI`` (or ``± std``); the value alone for n = 1; ``n/a`` for n = 0."""
    if s.n == 0 or s.mean is None:
        return "n/a"
    if s.n == 1:
        return f"{s.mean:.{digits}f}"
    width = s.half_width if spread == "ci" else s.std
    return f"{s.mean:.{digits}f} ± {width:.{digits}f}"


# ------------------------------------------------------------------------------------ tests

Test = Literal["paired t", "Welch t", "none"]


@dataclass(frozen=True)
class Comparison:
    """Two-sided test of ``a`` against ``b``. ``diff`` = mean(a) - mean(b) (over the seeds the test used);
    ``p`` is the raw p-value, ``p_adjusted`` the Holm-adjusted one within its family (set by :func:`rank`),
    ``test`` "none" when no test is possible (fewer than two seeds on a side, or no spread at all): p = 1."""

    a: Hashable
    b: Hashable
    test: Test
    diff: float
    statistic: Optional[float]
    df: Optional[float]
    p: float
    p_adjusted: Optional[float] = None

    def significant(self, alpha: float = ALPHA) -> bool:
        p = self.p if self.p_adjusted is None else self.p_adjusted
        return p < alpha


def _mean(xs: Sequence[float]) -> float:
    return math.fsum(xs) / len(xs)


def _var(xs: Sequence[float]) -> float:
    m = _mean(xs)
    return math.fsum((x - m) ** 2 for x in xs) / (len(xs) - 1)


def _two_sided(stat: float, df: float) -> float:
    return min(1.0, 2.0 * t_sf(abs(stat), df))


def no_spread(var: float, values: Iterable[float]) -> bool:
    """A variance that is zero up to floating-point rounding of ``values``."""
    scale = max((abs(v) for v in values), default=0.0)
    return var <= (1e-9 * max(1.0, scale)) ** 2


def compare(a: Mapping[int, float], b: Mapping[int, float], names: tuple[Hashable, Hashable] = ("a", "b")
            ) -> Comparison:
    """Test whether ``a`` and ``b`` (seed -> metric) differ: the paired t-test when both have the same
    seeds (at least two) and their differences spread, else Welch's t-test (at least two seeds and some
    spread), else no test (p = 1).
    ``names`` label the two sides in the returned :class:`Comparison`."""
    values = [*a.values(), *b.values()]
    if set(a) == set(b) and len(a) >= 2:
        seeds = sorted(a)
        d = [a[s] - b[s] for s in seeds]
        diff, n, var = _mean(d), len(d), _var(d)
        if not no_spread(var, values):
            stat = diff / math.sqrt(var / n)
            return Comparison(*names, "paired t", diff, stat, n - 1, _two_sided(stat, n - 1))
    xa, xb = list(a.values()), list(b.values())
    if not xa or not xb:
        raise ValueError("compare: both sides need at least one value")
    diff = _mean(xa) - _mean(xb)
    if len(xa) < 2 or len(xb) < 2:
        return Comparison(*names, "none", diff, None, None, 1.0)
    va, vb = _var(xa) / len(xa), _var(xb) / len(xb)
    if no_spread(va + vb, values):
        return Comparison(*names, "none", diff, None, None, 1.0)
    stat = diff / math.sqrt(va + vb)
    # Welch-Satterthwaite degrees of freedom
    df = (va + vb) ** 2 / (va ** 2 / (len(xa) - 1) + vb ** 2 / (len(xb) - 1))
    return Comparison(*names, "Welch t", diff, stat, df, _two_sided(stat, df))


def holm(p: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (same order as ``p``): the k-th smallest of m is multiplied by
    m - k + 1, running maxima keep them monotone, capped at 1. Reject where adjusted < alpha."""
    m = len(p)
    order = sorted(range(m), key=lambda i: p[i])
    out = [0.0] * m
    running = 0.0
    for k, i in enumerate(order):
        running = max(running, min(1.0, (m - k) * p[i]))
        out[i] = running
    return out


# ------------------------------------------------------------------------------------ ranking

@dataclass
class Ranking:
    """Ranks of one leaderboard cell. ``ranks[name]`` is 1 + the number of entries significantly better
    (Holm-adjusted p < ``alpha``, higher metric is better); ``comparisons`` holds every pair once."""

    ranks: dict[Hashable, int]
    means: dict[Hashable, float]
    comparisons: list[Comparison] = field(default_factory=list)
    alpha: float = ALPHA

    def order(self) -> list[Hashable]:
        """Names by rank, then by mean (best first), then by name."""
        return sorted(self.ranks, key=lambda k: (self.ranks[k], -self.means[k], str(k)))

    def comparison(self, a: Hashable, b: Hashable) -> Comparison:
        """The test of ``a`` against ``b`` (``diff`` = mean(a) - mean(b))."""
        for c in self.comparisons:
            if (c.a, c.b) == (a, b):
                return c
            if (c.a, c.b) == (b, a):
                stat = None if c.statistic is None else -c.statistic
                return Comparison(a, b, c.test, -c.diff, stat, c.df, c.p, c.p_adjusted)
        raise KeyError((a, b))

    def differs(self, a: Hashable, b: Hashable) -> bool:
        """``a`` and ``b`` are significantly different (after the correction)."""
        return self.comparison(a, b).significant(self.alpha)


def rank(samples: Mapping[Hashable, Mapping[int, float]], alpha: float = ALPHA,
         higher_is_better: bool = True) -> Ranking:
    """Competition ranks with ties of the entries of one cell; ``samples[name]`` maps seed -> metric.
    Entries without any value are left out."""
    samples = {k: dict(v) for k, v in samples.items() if v}
    names = list(samples)
    comparisons = []
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            comparisons.append(compare(samples[a], samples[b], (a, b)))
    adjusted = holm([c.p for c in comparisons])
    comparisons = [Comparison(c.a, c.b, c.test, c.diff, c.statistic, c.df, c.p, q)
                   for c, q in zip(comparisons, adjusted)]
    sign = 1.0 if higher_is_better else -1.0
    better = {k: 0 for k in names}
    for c in comparisons:
        if c.significant(alpha):
            loser = c.b if sign * c.diff > 0 else c.a
            better[loser] += 1
    means = {k: _mean(list(v.values())) for k, v in samples.items()}
    return Ranking({k: 1 + better[k] for k in names}, means, comparisons, alpha)


# ------------------------------------------------------------------------------------ rank correlation

def kendall_tau(x: Sequence[float], y: Sequence[float]) -> float:
    """Kendall's tau-b of two score lists over the same items (ties allowed); 1.0 for < 2 items."""
    concordant = discordant = ties_x = ties_y = 0
    for i in range(len(x)):
        for j in range(i + 1, len(x)):
            dx, dy = x[i] - x[j], y[i] - y[j]
            if dx == 0 and dy == 0:
                continue
            if dx == 0:
                ties_x += 1
            elif dy == 0:
                ties_y += 1
            elif (dx > 0) == (dy > 0):
                concordant += 1
            else:
                discordant += 1
    denom = math.sqrt((concordant + discordant + ties_x) * (concordant + discordant + ties_y))
    return 1.0 if denom == 0 else (concordant - discordant) / denom


def _average_ranks_of(xs: Sequence[float]) -> list[float]:
    order = sorted(range(len(xs)), key=lambda i: xs[i])
    ranks = [0.0] * len(xs)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and xs[order[j + 1]] == xs[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def spearman(x: Sequence[float], y: Sequence[float]) -> Optional[float]:
    """Spearman's rank correlation (Pearson's on average ranks, so ties are allowed); ``None`` when either
    side is constant or has fewer than two items."""
    if len(x) != len(y):
        raise ValueError("spearman: the two lists must be as long")
    rx, ry = _average_ranks_of(x), _average_ranks_of(y)
    if len(rx) < 2:
        return None
    mx, my = _mean(rx), _mean(ry)
    sxy = math.fsum((a - mx) * (b - my) for a, b in zip(rx, ry))
    sxx = math.fsum((a - mx) ** 2 for a in rx)
    syy = math.fsum((b - my) ** 2 for b in ry)
    return None if sxx == 0 or syy == 0 else sxy / math.sqrt(sxx * syy)
