"""Leaderboards as the platform shows them: per track, strategy (and retraining recipe) and
speedup, plus an Average view over the speedups; computed from result records only.

Each entry (one importance method + regularizer) states its n (ok seeds), the mean, standard
deviation and 95% confidence interval of the final metric (Student t), and a rank with ties:
``rank = 1 + the number of entries significantly better`` (Welch's t-test, two-sided, 5%), so
entries whose difference is inside the noise share a rank (shown ``2=``). With a single seed there
is no noise estimate: only equal means tie. Failed and cancelled runs are counted and shown, never
ranked.

The statistics live in :func:`cell_stats` and :func:`tie_ranks` only, so that a shared statistics
module can replace them in one place.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Optional

from harness.views.leaderboard import run_name
from specs.result import ResultRecord

ALPHA = 0.05


@dataclass
class Stats:
    n: int
    mean: Optional[float]
    std: Optional[float]
    ci95: Optional[float]  # half width of the 95% confidence interval of the mean


def cell_stats(values: list[float]) -> Stats:
    """n, mean, sample std and the 95% CI half width (Student t, n-1 dof) of ``values``."""
    n = len(values)
    if n == 0:
        return Stats(0, None, None, None)
    mean = statistics.fmean(values)
    if n == 1:
        return Stats(1, mean, None, None)
    from scipy import stats
    std = statistics.stdev(values)
    return Stats(n, mean, std, float(stats.t.ppf(1 - ALPHA / 2, n - 1)) * std / math.sqrt(n))


def _better(a: list[float], b: list[float]) -> bool:
    """Is the mean of ``a`` significantly higher than that of ``b``?"""
    ma, mb = statistics.fmean(a), statistics.fmean(b)
    if ma <= mb:
        return False
    if len(a) < 2 or len(b) < 2:
        return True  # no noise estimate: the means decide
    va, vb = statistics.variance(a), statistics.variance(b)
    if va == 0 and vb == 0:
        return True
    from scipy import stats
    return float(stats.ttest_ind(a, b, equal_var=False).pvalue) < ALPHA


def tie_ranks(samples: list[list[float]]) -> list[int]:
    """``1 + #entries significantly better`` for each entry's per-seed values."""
    return [1 + sum(_better(other, mine) for j, other in enumerate(samples) if j != i)
            for i, mine in enumerate(samples)]


def _mean(xs) -> Optional[float]:
    xs = [x for x in xs if x is not None]
    return statistics.fmean(xs) if xs else None


@dataclass
class Entry:
    name: str  # method[+regularizer]
    method: str
    regularizer: str
    stats: Stats
    values: list[float]  # per seed (Average view: per seed, averaged over the speedups)
    n_failed: int = 0
    n_cancelled: int = 0
    rank: Optional[int] = None
    tied: bool = False
    base: Optional[float] = None
    pruned: Optional[float] = None
    delta: Optional[float] = None
    achieved: Optional[float] = None
    params_kept: Optional[float] = None  # fraction
    macs_kept: Optional[float] = None
    latency_speedup: Optional[float] = None  # measured, batch 1
    latency_ms: Optional[float] = None  # pruned model, batch 1
    step_s: Optional[float] = None
    reg_s: Optional[float] = None
    error: str = ""
    keys: list[str] = field(default_factory=list)  # ok runs
    failed_keys: list[str] = field(default_factory=list)
    speedups_covered: int = 1

    @property
    def rank_label(self) -> str:
        return "-" if self.rank is None else f"{self.rank}{'=' if self.tied else ''}"

    def as_dict(self) -> dict:
        s = self.stats
        return {"name": self.name, "method": self.method, "regularizer": self.regularizer, "rank": self.rank,
                "rank_label": self.rank_label, "tied": self.tied, "n": s.n, "mean": s.mean, "std": s.std,
                "ci95": s.ci95, "values": self.values, "n_failed": self.n_failed, "n_cancelled": self.n_cancelled,
                "base": self.base, "pruned": self.pruned, "delta": self.delta, "achieved": self.achieved,
                "params_kept": self.params_kept, "macs_kept": self.macs_kept,
                "latency_speedup": self.latency_speedup, "latency_ms": self.latency_ms, "step_s": self.step_s,
                "reg_s": self.reg_s, "error": self.error, "keys": self.keys, "failed_keys": self.failed_keys,
                "speedups_covered": self.speedups_covered}


@dataclass
class Board:
    track: str
    metric: str
    setting: str  # strategy[ · retrain <recipe>]
    view: str  # "2x", "4x", ... or "average"
    speedups: list[float]  # of this setting
    settings: list[str]
    entries: list[Entry]
    methods: list[str]  # all importance methods of the track (for the filters)
    regularizers: list[str]
    note: str = ""

    def as_dict(self) -> dict:
        return {"track": self.track, "metric": self.metric, "setting": self.setting, "view": self.view,
                "speedups": self.speedups, "settings": self.settings, "methods": self.methods,
                "regularizers": self.regularizers, "note": self.note,
                "entries": [e.as_dict() for e in self.entries]}


def setting_of(r: ResultRecord) -> str:
    return r.strategy + (f" · retrain {r.recipe}" if r.recipe else "")


def _reg(r: ResultRecord) -> str:
    return r.regularizer.id if r.regularizer else "-"


def _entry(name: str, rs: list[ResultRecord]) -> Entry:
    ok = sorted((r for r in rs if r.status == "ok"), key=lambda r: r.seed)
    bad = [r for r in rs if r.status != "ok"]
    values = [r.metric.final for r in ok]
    lat = [r.latency for r in ok if r.latency]
    return Entry(
        name=name, method=rs[0].method.id, regularizer=_reg(rs[0]), stats=cell_stats(values), values=values,
        n_failed=sum(r.status == "failed" for r in bad), n_cancelled=sum(r.status == "cancelled" for r in bad),
        base=_mean(r.metric.base for r in rs), pruned=_mean(r.metric.pruned for r in ok),
        delta=_mean(r.metric.delta for r in ok), achieved=_mean(r.speedup.achieved for r in ok),
        params_kept=_mean(r.params.pruned / r.params.base for r in ok if r.params.base),
        macs_kept=_mean(r.macs.pruned / r.macs.base for r in ok if r.macs.base),
        latency_speedup=_mean(x.speedup_batch1 for x in lat), latency_ms=_mean(x.batch1_pruned_ms for x in lat),
        step_s=_mean(r.timing.step_s for r in ok), reg_s=_mean(r.timing.reg_s for r in ok),
        error=(bad[0].error or "") if bad and not ok else "", keys=[r.run_key for r in ok],
        failed_keys=[r.run_key for r in bad])


def _average_entry(name: str, rs: list[ResultRecord], speedups: list[float]) -> Entry:
    by_speedup: dict[float, list[ResultRecord]] = defaultdict(list)
    for r in rs:
        by_speedup[r.speedup.target].append(r)
    cells = [_entry(name, by_speedup[s]) for s in speedups if s in by_speedup]
    covered = [s for s in speedups if any(r.status == "ok" for r in by_speedup.get(s, []))]
    finals: dict[int, dict[float, float]] = defaultdict(dict)
    for r in rs:
        if r.status == "ok":
            finals[r.seed][r.speedup.target] = r.metric.final
    complete = len(covered) == len(speedups)
    values = [statistics.fmean(f[s] for s in speedups) for _, f in sorted(finals.items())
              if all(s in f for s in speedups)] if complete else []
    e = Entry(name=name, method=rs[0].method.id, regularizer=_reg(rs[0]), stats=cell_stats(values), values=values,
              n_failed=sum(c.n_failed for c in cells), n_cancelled=sum(c.n_cancelled for c in cells),
              base=_mean(c.base for c in cells), pruned=_mean(c.pruned for c in cells),
              delta=_mean(c.delta for c in cells) if complete else None,
              achieved=None, params_kept=_mean(c.params_kept for c in cells), macs_kept=_mean(c.macs_kept for c in cells),
              latency_speedup=_mean(c.latency_speedup for c in cells), latency_ms=_mean(c.latency_ms for c in cells),
              step_s=_mean(c.step_s for c in cells), reg_s=_mean(c.reg_s for c in cells),
              keys=[k for c in cells for k in c.keys], failed_keys=[k for c in cells for k in c.failed_keys],
              speedups_covered=len(covered))
    if not complete:
        e.error = f"ok at {len(covered)} of {len(speedups)} speedups: not averaged"
    return e


def board(records: list[ResultRecord], track: str, setting: Optional[str] = None, view: str = "average",
          importance: Optional[list[str]] = None, regularizers: Optional[list[str]] = None) -> Board:
    """The board of ``track`` for ``setting`` (default: the one with most runs) and ``view``
    (``"<speedup>x"`` or ``"average"``), keeping only the entries of the given importance methods
    and regularizers (``"-"`` = none) when given."""
    rs = [r for r in records if r.track.id == track]
    settings = sorted({setting_of(r) for r in rs}, key=lambda s: (-sum(setting_of(r) == s for r in rs), s))
    if setting is None or setting not in settings:
        setting = settings[0] if settings else "protected_global"
    rs = [r for r in rs if setting_of(r) == setting]
    methods = sorted({r.method.id for r in rs})
    regs = sorted({_reg(r) for r in rs})
    speedups = sorted({r.speedup.target for r in rs})
    if importance:
        rs = [r for r in rs if r.method.id in importance]
    if regularizers:
        rs = [r for r in rs if _reg(r) in regularizers]
    groups: dict[str, list[ResultRecord]] = defaultdict(list)
    for r in rs:
        groups[run_name(r, recipe=False)].append(r)
    if view == "average":
        entries = [_average_entry(name, g, speedups) for name, g in groups.items()]
    else:
        try:
            target = float(view.rstrip("x"))
        except ValueError:
            target = speedups[0] if speedups else 2.0
        view = f"{target:g}x"
        entries = [_entry(name, [r for r in g if r.speedup.target == target]) for name, g in groups.items()
                   if any(r.speedup.target == target for r in g)]
    ranked = [e for e in entries if e.stats.n > 0]
    for e, rank in zip(ranked, tie_ranks([e.values for e in ranked])):
        e.rank = rank
    counts = defaultdict(int)
    for e in ranked:
        counts[e.rank] += 1
    for e in ranked:
        e.tied = counts[e.rank] > 1
    entries.sort(key=lambda e: (e.rank is None, e.rank or 0, -(e.stats.mean or 0), e.name))
    metric = rs[0].metric.name if rs else "top1"
    ns = {e.stats.n for e in ranked}
    note = ("one seed per entry: no spread to test, so only equal means tie; run more seeds for confidence "
            "intervals" if ns == {1} else "")
    return Board(track=track, metric=metric, setting=setting, view=view, speedups=speedups, settings=settings,
                 entries=entries, methods=methods, regularizers=regs, note=note)


def curves(records: list[ResultRecord], track: str, setting: str, importance=None, regularizers=None) -> dict:
    """Per entry name: [(achieved speedup mean, final mean, ci95 or None, target)] over the targets."""
    out: dict[str, list[tuple]] = {}
    b = board(records, track, setting, "average", importance, regularizers)
    for s in b.speedups:
        for e in board(records, track, setting, f"{s:g}x", importance, regularizers).entries:
            if e.stats.mean is not None:
                out.setdefault(e.name, []).append((e.achieved, e.stats.mean, e.stats.ci95, s, e.latency_speedup))
    return out


def pareto(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both coordinates (both maximized), by x."""
    front = []
    for i, (x, y) in enumerate(points):
        if not any((x2 >= x and y2 >= y) and (x2 > x or y2 > y) for x2, y2 in points):
            front.append(i)
    return sorted(front, key=lambda i: points[i][0])
