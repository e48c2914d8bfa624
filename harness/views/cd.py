"""Rankings over all the evidence: the critical-difference analysis (Demšar 2006), comparisons with a control, power.

A leaderboard cell holds a few seeds, too few for any pairwise test to separate methods (with n = 3 the paired
t-test has 2 degrees of freedom). Benchmark practice analyses the whole section instead:

- **Blocks.** One block per (speedup, seed) of a section (or per (track, speedup, seed) across tracks): the same
  base checkpoint, target, calibration images and retraining order for every method. Within a block the methods
  are ranked on the section's metric (1 = best, ties share the average rank); :attr:`Analysis.mean_ranks` are the
  means over the blocks.
- **Friedman's test** (``scipy.stats.friedmanchisquare``, tie-corrected): are the mean ranks further apart than
  chance would make them?
- **Nemenyi's post-hoc test** (``scikit_posthocs.posthoc_nemenyi_friedman``) and its **critical difference**
  ``CD = q_alpha · sqrt(k (k + 1) / (6 N))`` with ``q_alpha`` the studentized range quantile over sqrt 2
  (``scipy.stats.studentized_range``, infinite degrees of freedom): two methods differ when their mean ranks are
  more than CD apart, and only when Friedman's test rejects (Demšar's protocol). Nemenyi because the question is
  all pairs at once and a CD diagram is defined by it; Wilcoxon–Holm would test each pair on its own differences
  but gives no single CD to draw, and Conover's test is more liberal than the family-wise 5% this project keeps.
- **Against a control** (:func:`control_tests`): per cell, each method against the control (Random unless the
  track names another) with the paired t-test by seed (Welch where the seeds do not pair), Holm over the k − 1
  comparisons: the question "does this criterion beat random channels at this speedup?".
- **Power** (:func:`power`, :func:`minimum_detectable_difference`, :func:`seeds_needed`): the smallest difference
  to the control a cell could detect with 80% power at its n (the noncentral t of ``scipy.stats``, at the
  Bonferroni level alpha / (k − 1), Holm's first step), from the cell's pooled standard deviation of the
  per-seed differences to the control; and how many seeds a cell needs for a given difference.

scipy and scikit-posthocs are imported inside the functions (``pbench-harness --help`` stays fast).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Hashable, Mapping, Optional

from harness.views import stats

ALPHA = stats.ALPHA
POWER = 0.8
DEFAULT_CONTROL = "random"

__all__ = ["ALPHA", "Analysis", "ControlTest", "DEFAULT_CONTROL", "POWER", "analyse", "control_tests",
           "critical_difference", "difference_sd", "fmt_p", "fmt_seeds", "MOST_SEEDS", "minimum_detectable_difference", "power", "q_alpha",
           "seeds_needed"]


def q_alpha(k: int, alpha: float = ALPHA) -> float:
    """Nemenyi's critical value for ``k`` methods: the studentized range quantile (infinite df) over sqrt 2
    (Demšar 2006, Table 5a: 2.343 for k = 3, 2.569 for k = 4, 3.164 for k = 10 at alpha = 0.05)."""
    if k < 2:
        raise ValueError(f"q_alpha needs at least 2 methods, got {k}")
    from scipy.stats import studentized_range
    return float(studentized_range.ppf(1 - alpha, k, math.inf)) / math.sqrt(2)


def critical_difference(k: int, n_blocks: int, alpha: float = ALPHA) -> float:
    """Nemenyi's critical difference of mean ranks for ``k`` methods over ``n_blocks`` blocks."""
    return q_alpha(k, alpha) * math.sqrt(k * (k + 1) / (6 * n_blocks))


@dataclass
class Analysis:
    """The critical-difference analysis of one section on one metric.

    ``names`` are the analysed methods, best mean rank first; ``excluded`` the methods left out because they lack
    a value in some group of blocks (an ok run at some speedup), or all methods when no block is complete;
    ``incomplete`` those left out because they miss some blocks (see :func:`analyse`).
    ``friedman_statistic``/``friedman_p``, ``critical_difference`` and ``nemenyi_p`` are ``None`` when no test
    is possible (fewer than 3 methods or 2 blocks)."""

    metric: str
    names: list[Hashable]
    mean_ranks: dict[Hashable, float]
    blocks: list[tuple]
    excluded: list[Hashable] = field(default_factory=list)
    #: methods left out because failed runs leave them without a value in some blocks: method -> blocks missed
    incomplete: dict[Hashable, int] = field(default_factory=dict)
    friedman_statistic: Optional[float] = None
    friedman_p: Optional[float] = None
    critical_difference: Optional[float] = None
    nemenyi_p: dict[tuple, float] = field(default_factory=dict)
    alpha: float = ALPHA

    @property
    def k(self) -> int:
        return len(self.names)

    @property
    def n_blocks(self) -> int:
        return len(self.blocks)

    @property
    def rejects(self) -> bool:
        """Friedman's test rejects "every method ranks alike" at ``alpha``."""
        return self.friedman_p is not None and self.friedman_p < self.alpha

    def differs(self, a: Hashable, b: Hashable) -> bool:
        """``a`` and ``b`` are separated: Friedman rejects and their mean ranks are more than CD apart."""
        return self.rejects and abs(self.mean_ranks[a] - self.mean_ranks[b]) > self.critical_difference

    def better_than(self, a: Hashable) -> list[Hashable]:
        """The methods ``a`` is separated from and ranks better than (by mean rank)."""
        return [b for b in self.names if b != a and self.differs(a, b) and self.mean_ranks[a] < self.mean_ranks[b]]

    def separated(self) -> list[tuple[Hashable, Hashable]]:
        """Every separated pair, (better, worse), best first."""
        return [(a, b) for a in self.names for b in self.better_than(a)]

    def cliques(self) -> list[list[Hashable]]:
        """The bars of a CD diagram: maximal runs of consecutive methods (by mean rank) no two of which are
        separated; single methods are left out. All methods form one clique when Friedman does not reject."""
        out: list[list[Hashable]] = []
        for i in range(self.k):
            j = i
            while j + 1 < self.k and not self.differs(self.names[i], self.names[j + 1]):
                j += 1
            run = self.names[i:j + 1]
            if len(run) > 1 and not any(set(run) <= set(o) for o in out):
                out.append(run)
        return out


def _complete(blocks: Mapping[tuple, Mapping[Hashable, float]], names: list) -> list[tuple]:
    return [b for b, values in blocks.items() if all(n in values for n in names)]


def analyse(blocks: Mapping[tuple, Mapping[Hashable, float]], metric: str = "final", higher_is_better: bool = True,
            alpha: float = ALPHA, groups: Optional[Mapping[tuple, Hashable]] = None) -> Analysis:
    """The critical-difference analysis of ``blocks`` (block -> method -> metric value).

    ``groups`` maps a block to its group (e.g. its speedup): a method without any value in some group is left
    out (``excluded``), so that one failed method does not remove a whole speedup. Friedman's test needs complete
    blocks; where failed runs leave holes, methods are left out greedily, the one missing most blocks first, as
    long as that uses no fewer values (methods × complete blocks) and keeps 3 methods where 2 blocks remain
    (``incomplete``: method -> blocks it misses), so that one failed run never removes a block for everyone.
    Non-finite values count as missing."""
    import numpy as np
    from scipy.stats import friedmanchisquare, rankdata

    blocks = {b: {n: v for n, v in values.items() if v is not None and math.isfinite(v)}
              for b, values in blocks.items()}
    names = sorted({n for b in blocks.values() for n in b}, key=str)
    excluded: list[Hashable] = []
    if groups is not None:
        by_group: dict[Hashable, set] = {}
        for b, values in blocks.items():
            by_group.setdefault(groups[b], set()).update(values)
        excluded = [n for n in names if any(n not in present for present in by_group.values())]
        names = [n for n in names if n not in excluded]
    incomplete: dict[Hashable, int] = {}
    while len(names) > 1:
        used = _complete(blocks, names)
        missing = {n: sum(n not in values for values in blocks.values()) for n in names}
        worst = max(names, key=lambda n: (missing[n], str(n)))
        if missing[worst] == 0:
            break
        rest = [n for n in names if n != worst]
        if used and ((len(rest) < 3 <= len(names) and len(used) >= 2)
                     or len(rest) * len(_complete(blocks, rest)) < len(names) * len(used)):
            break
        incomplete[worst] = missing[worst]
        names = rest
    used = sorted(_complete(blocks, names), key=str)
    if not names or not used:  # no block in which every method has a value: nothing to rank
        out = Analysis(metric, [], {}, [], excluded + names, alpha=alpha)
        out.incomplete = incomplete
        return out
    x = np.array([[blocks[b][n] for n in names] for b in used], dtype=float)
    ranks = np.vstack([rankdata(-row if higher_is_better else row) for row in x])
    mean = ranks.mean(axis=0)
    mean_ranks = {n: float(r) for n, r in zip(names, mean)}
    ordered = sorted(names, key=lambda n: (mean_ranks[n], str(n)))
    out = Analysis(metric, ordered, mean_ranks, used, excluded, alpha=alpha, incomplete=incomplete)
    k, n_blocks = len(names), len(used)
    if k < 3 or n_blocks < 2:
        return out
    if np.all(ranks == ranks[:, :1]):  # every method tied in every block: nothing to test
        out.friedman_statistic, out.friedman_p = 0.0, 1.0
    else:
        res = friedmanchisquare(*x.T)
        out.friedman_statistic, out.friedman_p = float(res.statistic), float(res.pvalue)
    out.critical_difference = critical_difference(k, n_blocks, alpha)
    import scikit_posthocs
    p = scikit_posthocs.posthoc_nemenyi_friedman(x).to_numpy()
    out.nemenyi_p = {(a, b): float(p[i, j]) for i, a in enumerate(names) for j, b in enumerate(names) if i != j}
    return out


# ------------------------------------------------------------------------------------ control, power

@dataclass(frozen=True)
class ControlTest:
    """One method against the control in one cell: ``diff`` = mean(method) − mean(control) over the seeds the test
    used, ``p`` raw, ``p_adjusted`` Holm over the cell's k − 1 comparisons with the control."""

    name: Hashable
    control: Hashable
    test: str
    diff: float
    p: float
    p_adjusted: float
    alpha: float = ALPHA

    @property
    def significant(self) -> bool:
        return self.p_adjusted < self.alpha


def control_tests(samples: Mapping[Hashable, Mapping[int, float]], control: Hashable = DEFAULT_CONTROL,
                  alpha: float = ALPHA) -> list[ControlTest]:
    """Each entry of one cell (name -> seed -> metric) against ``control``: :func:`harness.views.stats.compare`
    (paired t by seed, else Welch), Holm over the k − 1 comparisons. Empty when the control is not in the cell."""
    samples = {k: v for k, v in samples.items() if v}
    if control not in samples:
        return []
    others = [n for n in samples if n != control]
    tests = [stats.compare(samples[n], samples[control], (n, control)) for n in others]
    adjusted = stats.holm([c.p for c in tests])
    return [ControlTest(n, control, c.test, c.diff, c.p, q, alpha) for n, c, q in zip(others, tests, adjusted)]


def difference_sd(samples: Mapping[Hashable, Mapping[int, float]], control: Hashable = DEFAULT_CONTROL
                  ) -> tuple[Optional[float], int]:
    """The cell's pooled standard deviation of the per-seed differences to the control (root mean of the
    variances of the entries the paired t-test compares with it: the same seeds as the control, at least 2, and
    differences that spread) and the median number of seeds of those entries; ``(None, 0)`` when no entry is
    compared by the paired test. An entry whose differences do not spread, or whose seeds do not pair with the
    control's, is compared by Welch's test or by none (:func:`harness.views.stats.compare`): it measures no
    spread of differences, and a standard deviation of 0 would claim that any difference is detectable."""
    base = samples.get(control) or {}
    variances, ns = [], []
    for name, values in samples.items():
        if name == control or set(values) != set(base) or len(base) < 2:
            continue
        d = [values[s] - base[s] for s in sorted(base)]
        m = math.fsum(d) / len(d)
        var = math.fsum((x - m) ** 2 for x in d) / (len(d) - 1)
        if not stats.no_spread(var, [*values.values(), *base.values()]):
            variances.append(var)
            ns.append(len(d))
    if not variances:
        return None, 0
    ns.sort()
    return math.sqrt(math.fsum(variances) / len(variances)), ns[len(ns) // 2]


def _level(comparisons: int, alpha: float) -> float:
    return alpha / max(1, comparisons)


def power(effect: float, n: int, comparisons: int = 1, alpha: float = ALPHA) -> float:
    """The power of the two-sided paired t-test on ``n`` seeds at level ``alpha / comparisons`` for a true mean
    difference of ``effect`` standard deviations: the noncentral t (``scipy.stats.nct``, noncentrality
    ``effect·√n``, n − 1 degrees of freedom) beyond the two critical values. (statsmodels' ``TTestPower`` computes
    the same but returns NaN for the far tail with 2 degrees of freedom; such a tail counts 1 beyond the critical
    value, else 0.)"""
    from scipy.stats import nct, t
    df = n - 1
    crit = float(t.ppf(1 - _level(comparisons, alpha) / 2, df))
    nc = effect * math.sqrt(n)
    upper, lower = float(nct.sf(crit, df, nc)), float(nct.cdf(-crit, df, nc))
    # scipy answers NaN far out in a tail: there the tail is 1 when the noncentrality lies beyond its critical
    # value (a huge difference is always detected), else 0
    upper = (1.0 if nc > crit else 0.0) if math.isnan(upper) else upper
    lower = (1.0 if nc < -crit else 0.0) if math.isnan(lower) else lower
    return min(1.0, upper + lower)


def minimum_detectable_difference(sd: float, n: int, comparisons: int = 1, alpha: float = ALPHA,
                                  power_: float = POWER) -> Optional[float]:
    """The smallest true mean difference a two-sided paired t-test on ``n`` seeds detects with probability
    ``power_`` at level ``alpha / comparisons``, for differences with standard deviation ``sd``; ``None`` for
    n < 2 or no measured spread (sd = 0).

    Solved with scipy's ``brentq`` on :func:`power` (statsmodels' ``TTestPower.solve_power`` stops at 10 standard
    deviations and returns that bound as if it were the answer, as it does for 3 seeds at 5% / 16)."""
    if n < 2 or sd is None or sd <= 0:  # no spread measured: nothing to say about power
        return None
    from scipy.optimize import brentq
    hi = 1.0
    while power(hi, n, comparisons, alpha) < power_:
        hi *= 2
    effect = brentq(lambda d: power(d, n, comparisons, alpha) - power_, 0.0, hi, xtol=1e-10)
    return float(effect) * sd


#: ``seeds_needed`` looks no further
MOST_SEEDS = 100_000


def seeds_needed(sd: float, difference: float, comparisons: int = 1, alpha: float = ALPHA, power_: float = POWER,
                 most: int = MOST_SEEDS) -> Optional[int]:
    """The fewest seeds (at least 2) with which the paired t-test detects ``difference`` with probability
    ``power_`` at level ``alpha / comparisons`` (differences with standard deviation ``sd`` > 0); ``None`` when
    more than ``most`` would be needed."""
    if not (math.isfinite(difference) and difference > 0):
        raise ValueError(f"the target difference must be a finite number > 0, got {difference}")
    if not sd > 0:
        raise ValueError(f"the standard deviation of the differences must be > 0 (measured), got {sd}")

    def enough(n: int) -> bool:
        return power(difference / sd, n, comparisons, alpha) >= power_

    if enough(2):
        return 2
    lo, hi = 2, 4  # power grows with n: the answer lies in (lo, hi]
    while not enough(hi):
        if hi >= most:
            return None
        lo, hi = hi, min(most, hi * 2)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if enough(mid) else (mid, hi)
    return hi


def fmt_seeds(n: Optional[int], most: int = MOST_SEEDS) -> str:
    """:func:`seeds_needed` as tables show it: ``>100000`` beyond the search."""
    return f">{most}" if n is None else str(n)


def fmt_p(p: Optional[float]) -> str:
    """A p-value as tables show it: 2 significant digits, scientific below 0.001."""
    if p is None:
        return "n/a"
    return f"{p:.1e}" if p < 1e-3 else f"{p:.2g}" if p < 0.1 else f"{p:.2f}"

