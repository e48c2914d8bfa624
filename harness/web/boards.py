"""Leaderboards as the platform shows them: thin views over :mod:`harness.views.leaderboard`.

The statistics and ranks are the shared library's, so the platform, ``pbench-harness leaderboard`` and
the static site rank identically. :func:`harness.views.leaderboard.rows` gives one row per (section,
speedup, strategy, recipe, method, regularizer) with n, mean ± 95% CI (Student t) of the final, pruned and
pruned+BN metrics, and competition ranks with ties per cell (two-sided paired t-test by seed where the
seeds pair, else Welch; Holm over all pairs of the cell); the Average view is the critical-difference
analysis (:func:`harness.views.leaderboard.average`, :mod:`harness.views.cd`: Friedman mean ranks over the
blocks (speedup, seed), Nemenyi's critical difference, each method against the control per speedup, the
minimum detectable difference per cell), on the final metric and on Pruned+BN. Records of
different base checkpoints or track versions are separate **sections**, never pooled or ranked together,
and :func:`harness.views.leaderboard.base_warnings` names them.

What this module adds: the choice of a setting (``strategy[ · retrain recipe]``) and a view (one speedup
or ``average``); filters by importance method and regularizer that **hide rows and never re-rank** (a
rank is its cell's, whatever is shown); run keys, cancelled counts and batch-1 latency in ms from the
records; per section, the points of the two charts and their Pareto front. The pydantic models below are
the JSON of ``GET /api/leaderboards/{track}`` (and its OpenAPI schema).
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from typing import Optional

from pydantic import BaseModel, Field

from harness.errors import HarnessError
from harness.views import latency as lat
from harness.views import leaderboard as lb
from harness.views import stats
from specs.result import ResultRecord

AVERAGE = "average"
AVERAGE_LEGEND = lb.AVERAGE_LEGEND + (" Ranks per speedup: the speedup tabs' ranks (Holm over all pairs of a cell); "
                                      "Ranked: at how many speedups a method has one.")
FILTER_LEGEND = "Filters hide rows: a rank is always over every method of its cell."


class Stat(BaseModel):
    """One metric over the ok seeds of a cell (:class:`harness.views.stats.Summary`)."""

    n: int = Field(description="ok seeds with a value")
    mean: Optional[float] = None
    std: Optional[float] = Field(None, description="sample standard deviation (n - 1); null for n < 2")
    ci95_low: Optional[float] = Field(None, description="95% confidence interval of the mean (Student t, n - 1 "
                                                        "degrees of freedom); null for n < 2")
    ci95_high: Optional[float] = None
    half_width: Optional[float] = Field(None, description="(ci95_high - ci95_low) / 2")
    text: str = Field(description="as the CLI prints it: 'mean ± half_width', the value alone for n = 1, 'n/a' "
                                  "for n = 0")

    @classmethod
    def of(cls, s: stats.Summary) -> "Stat":
        return cls(n=s.n, mean=s.mean, std=s.std, ci95_low=s.ci95_low, ci95_high=s.ci95_high,
                   half_width=s.half_width, text=stats.fmt(s))


class LatencyStat(BaseModel):
    """A batch-1 latency speedup in one runtime (:class:`harness.views.latency.LatencyCell`)."""

    speedup: float = Field(description="the median run's, over the ok runs that measured it (spec 1.4 runs only, "
                                       "where any)")
    ci95: Optional[tuple[float, float]] = Field(description="that run's own 95% interval (null for records before "
                                                            "spec 1.4)")
    uncertain: bool = Field(description="some run's interval is wider than +-10%, or the runs predate spec 1.4")
    text: str = Field(description="as the tables show it")

    @classmethod
    def of(cls, c: lat.LatencyCell) -> "LatencyStat":
        return cls(speedup=c.speedup, ci95=(c.low, c.high) if c.low is not None else None, uncertain=c.uncertain,
                   text=c.text())


class Entry(BaseModel):
    """One method (+ regularizer) in one cell (section, speedup, setting): a row of a speedup tab."""

    name: str = Field(description="method[+regularizer]")
    method: str
    regularizer: str = Field(description="'-' for none")
    rank: Optional[int] = Field(description="competition rank on the final metric within the cell: 1 + the "
                                            "methods significantly better (harness.views.leaderboard.rows); "
                                            "null without an ok run")
    tied: bool = Field(description="another method of the cell has the same rank")
    shared_with: list[str] = Field(description="the methods of the cell with the same rank")
    n: int = Field(description="ok seeds (= final.n)")
    n_failed: int = Field(description="failed runs (cancelled ones not included)")
    n_cancelled: int
    final: Stat
    pruned: Stat = Field(description="after pruning, before retraining")
    pruned_recal: Stat = Field(description="Pruned+BN: after pruning with BatchNorm statistics re-estimated on the "
                                           "track's calibration images, before retraining")
    delta: Stat = Field(description="final - base")
    seeds: dict[int, float] = Field(description="seed -> final metric of the ok runs (what the ranks test)")
    base: Optional[float] = Field(description="the base checkpoint's metric")
    achieved: Optional[float] = Field(description="achieved MACs speedup, mean over ok runs")
    params_kept: Optional[float] = Field(description="pruned / base parameters, mean over ok runs")
    latency_speedup: Optional[float] = Field(description="measured batch-1 latency speedup in eager PyTorch: the "
                                                         "median run's (latency.eager)")
    latency_ms: Optional[float] = Field(description="that run's pruned model at batch 1 (ms; on the CPU the timing "
                                                    "thread's CPU time, records before spec 1.4 wall time)")
    latency: dict[str, LatencyStat] = Field(default_factory=dict, description="batch-1 latency speedup per runtime "
                                                                              "(eager, onnxruntime, ...)")
    step_s: Optional[float] = Field(description="mean seconds of one importance-scoring step")
    reg_s: Optional[float] = Field(description="mean seconds of regularized training")
    constant_scores: bool = Field(description=f"shown {lb.FLAG}: some run's scores were constant in every group, "
                                              f"so it pruned by the seeded tie-break alone (at random)")
    tied_fraction: Optional[float] = Field(description="mean fraction of channels whose score equals another's")
    warnings: list[str] = Field(description="one line per run with constant scores")
    error: str = Field(description="the first failure's reason when no run is ok")
    keys: list[str] = Field(description="run keys of the ok runs")
    failed_keys: list[str] = Field(description="run keys of the failed and cancelled runs")


class ControlEntry(BaseModel):
    """One method against the control in one cell (:class:`harness.views.cd.ControlTest`)."""

    diff: float = Field(description="mean(method) - mean(control) over the seeds the test used")
    p: float = Field(description="two-sided p of the paired t-test by seed (Welch where the seeds do not pair)")
    p_holm: float = Field(description="Holm-adjusted over the cell's k - 1 comparisons with the control")
    significant: bool = Field(description="p_holm < 0.05")
    test: str


class Friedman(BaseModel):
    statistic: float = Field(description="Friedman's chi-square (tie-corrected, scipy.stats.friedmanchisquare)")
    p: float


class Analysis(BaseModel):
    """The critical-difference analysis of a section on one metric (:class:`harness.views.cd.Analysis`)."""

    metric: str = Field(description="'final' or 'pruned_recal'")
    friedman: Optional[Friedman] = Field(description="null with fewer than 3 methods or 2 blocks")
    critical_difference: Optional[float] = Field(description="Nemenyi's CD of mean ranks at 5%")
    blocks: int = Field(description="blocks (speedup, seed) in which every analysed method has an ok run")
    methods: int
    mean_rank: dict[str, float] = Field(description="method -> mean rank over the blocks (1 = best), best first")
    excluded: list[str] = Field(description="methods left out: no ok run at some speedup")
    incomplete: dict[str, int] = Field(default_factory=dict, description="methods left out because failed runs "
                                       "leave them without a value in some blocks: method -> blocks missing")
    separated: list[list[str]] = Field(description="[better, worse] pairs separated by the critical difference")
    cliques: list[list[str]] = Field(description="groups of consecutive methods no test separates (the diagram's "
                                                 "bars)")

    @classmethod
    def of(cls, a) -> "Analysis":
        d = lb.analysis_json(a)
        return cls(**{k: d[k] for k in cls.model_fields})


class PowerCell(BaseModel):
    """What one cell could detect against the control (:class:`harness.views.leaderboard.Power`)."""

    speedup: float
    sd: Optional[float] = Field(description="pooled standard deviation of the per-seed differences to the control")
    n: int = Field(description="seeds shared with the control (median over the methods)")
    comparisons: int = Field(description="k - 1: the test level is 0.05 / comparisons")
    minimum_detectable_difference: Optional[float] = Field(description="detected with 80% power (paired t)")


class AverageEntry(BaseModel):
    """One method (+ regularizer) in the Average view of a section (:class:`harness.views.leaderboard.AverageRow`)."""

    name: str
    method: str
    regularizer: str
    mean_rank: Optional[float] = Field(description="Friedman mean rank on the final metric over the blocks (speedup, "
                                                   "seed), 1 = best; null: left out (no ok run at some speedup)")
    pruned_recal_mean_rank: Optional[float] = Field(description="the same on Pruned+BN")
    ahead_of: list[str] = Field(description="methods it is separated from by the critical difference, and ahead")
    behind: list[str] = Field(description="methods separated from it, and ahead of it")
    versus_control: dict[str, Optional[ControlEntry]] = Field(
        description="'<speedup>x' -> its comparison with the control on the final metric (null for the control)")
    ranked: int = Field(description="speedups at which it has a per-cell rank")
    speedups: int = Field(description="speedups of the section")
    ranks: dict[str, Optional[int]] = Field(description="'<speedup>x' -> its per-cell rank there (null: no ok run)")
    constant_scores: bool
    keys: list[str] = Field(description="run keys of its ok runs at every speedup")


class Point(BaseModel):
    """One chart point: a method's cell at one speedup."""

    name: str
    speedup: float = Field(description="target MACs speedup")
    achieved: Optional[float] = Field(description="achieved MACs speedup (mean)")
    final: Stat
    latency_speedup: Optional[float] = Field(description="batch-1 latency speedup in the section's latency_runtime")
    rank: Optional[int]
    pareto: bool = Field(description="on the Pareto front of final mean vs latency speedup of the points shown")


class BoardSection(BaseModel):
    """The records of one (track, track hash, base checkpoint): ranked on their own."""

    track: str
    track_hash: str
    base_sha256: Optional[str] = Field(description="the base checkpoint every run of the section started from")
    label: str
    runs: int = Field(description="records of the section in this setting")
    speedups: list[float] = Field(description="target speedups of the section in this setting")
    entries: list[Entry] = Field(description="the view's speedup, best first (empty in the Average view)")
    average: list[AverageEntry] = Field(description="the Average view, best first (empty for a speedup view)")
    friedman: Optional[Friedman] = Field(None, description="Average view: Friedman's test on the final metric over "
                                                           "the blocks (speedup, seed)")
    critical_difference: Optional[float] = Field(None, description="Average view: Nemenyi's critical difference")
    analysis: Optional[Analysis] = Field(None, description="Average view: the analysis of the final metric")
    analysis_pruned_recal: Optional[Analysis] = Field(None, description="Average view: the analysis of Pruned+BN")
    control: str = Field("random", description="the control of the comparisons (the track's)")
    control_ran: bool = Field(True, description="Average view: the control has an ok run in this section (else no "
                                                "comparison with it is possible)")
    power: list[PowerCell] = Field(default_factory=list, description="Average view: per speedup, the final "
                                                                     "metric's minimum detectable difference")
    power_pruned_recal: list[PowerCell] = Field(default_factory=list)
    points: list[Point] = Field(description="every shown method at every speedup: the charts")
    latency_runtime: str = Field(lat.EAGER, description="the runtime of the points' latency speedups: the "
                                                        "deployment runtime (onnxruntime) where it was measured")
    note: str = ""


class Leaderboard(BaseModel):
    """``GET /api/leaderboards/{track}``: one setting and view of a track, one section per base checkpoint."""

    track: str
    metric: str
    setting: str = Field(description="strategy[ · retrain recipe]")
    settings: list[str] = Field(description="the track's settings, most runs first")
    view: str = Field(description="'average' or '<speedup>x'")
    views: list[str]
    speedups: list[float] = Field(description="target speedups of the setting (all sections)")
    methods: list[str] = Field(description="importance methods of the setting (for the filters)")
    regularizers: list[str]
    importance: list[str] = Field(description="the importance filter (empty: all)")
    regularizer: list[str] = Field(description="the regularizer filter (empty: all)")
    warnings: list[str] = Field(description="one line per track whose records come from several base checkpoints "
                                            "or track versions (harness.views.leaderboard.base_warnings)")
    legend: str = Field(description="what the numbers and ranks are: the test and the correction")
    flag_legend: Optional[str] = Field(description=f"what {lb.FLAG} means, when an entry shown has it")
    average_legend: str
    filter_legend: str
    sections: list[BoardSection]


def parse_view(view: str) -> Optional[float]:
    """The target speedup of ``view`` (``"4x"``, ``"4"``), ``None`` for ``"average"``."""
    if view == AVERAGE:
        return None
    try:
        target = float(view.removesuffix("x"))
    except ValueError:
        target = math.nan
    if not math.isfinite(target) or target <= 1:
        raise HarnessError(f"view must be 'average' or a speedup such as '4x', got {view!r}")
    return target


def pareto(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both coordinates (both maximized), by x."""
    front = []
    for i, (x, y) in enumerate(points):
        if not any((x2 >= x and y2 >= y) and (x2 > x or y2 > y) for x2, y2 in points):
            front.append(i)
    return sorted(front, key=lambda i: points[i][0])


def _ok_keys(row: lb.Row) -> list[str]:
    return [r.run_key for r in sorted(row.records, key=lambda r: r.seed) if r.status == "ok"]


def _entry(row: lb.Row, shared_with: list[str]) -> Entry:
    ok = sorted((r for r in row.records if r.status == "ok"), key=lambda r: r.seed)
    bad = [r for r in row.records if r.status != "ok"]
    cancelled = sum(r.status == "cancelled" for r in bad)
    return Entry(
        name=row.name, method=row.method, regularizer=row.regularizer, rank=row.rank, tied=bool(shared_with),
        shared_with=shared_with, n=row.final.n, n_failed=row.n_failed - cancelled, n_cancelled=cancelled,
        final=Stat.of(row.final), pruned=Stat.of(row.pruned), pruned_recal=Stat.of(row.pruned_recal),
        delta=Stat.of(row.delta), seeds=dict(sorted(row.finals.items())), base=row.base, achieved=row.achieved,
        params_kept=row.params_ratio, latency_speedup=row.latency_speedup,
        latency={name: LatencyStat.of(c) for name, c in row.latency.items()},
        latency_ms=row.latency[lat.EAGER].ms if lat.EAGER in row.latency else None, step_s=row.step_s, reg_s=row.reg_s,
        constant_scores=row.constant_scores, tied_fraction=row.tied_fraction,
        warnings=[w for r in ok if (w := lb.constant_scores_warning(r))],
        error=row.error or "", keys=_ok_keys(row),
        failed_keys=[r.run_key for r in bad])


def _control(t) -> Optional[ControlEntry]:
    return None if t is None else ControlEntry(diff=t.diff, p=t.p, p_holm=t.p_adjusted, significant=t.significant,
                                               test=t.test)


def _power(p: lb.Power) -> PowerCell:
    return PowerCell(speedup=p.speedup, sd=p.sd, n=p.n, comparisons=p.comparisons,
                     minimum_detectable_difference=p.mdd)


def _section(section: lb.Section, rows: list[lb.Row], target: Optional[float], shown) -> BoardSection:
    by_rank: dict[tuple, list[str]] = defaultdict(list)  # the rows of a cell that share a rank
    for r in rows:
        if r.rank is not None:
            by_rank[(r.setting, r.rank)].append(r.name)
    visible = [r for r in rows if shown(r.method, r.regularizer)]
    entries = [] if target is None else [
        _entry(r, [n for n in by_rank[(r.setting, r.rank)] if n != r.name] if r.rank is not None else [])
        for r in visible if r.speedup == target]
    average, extra = [], {}
    if target is None:
        final, recal = lb.analysis(rows, "final"), lb.analysis(rows, "pruned_recal")
        for a in lb.average(rows):
            if not shown(a.method, a.regularizer):
                continue
            mine = [r for r in rows if r.name == a.name]
            complete = a.ranked == a.speedups
            average.append(AverageEntry(
                name=a.name, method=a.method, regularizer=a.regularizer, mean_rank=a.mean_rank,
                pruned_recal_mean_rank=recal.mean_ranks.get(a.name), ahead_of=a.better_than, behind=a.worse_than,
                versus_control={f"{r.speedup:g}x": _control(a.versus_control.get(r.speedup)) for r in mine},
                ranked=a.ranked, speedups=a.speedups, ranks={f"{r.speedup:g}x": r.rank for r in mine},
                constant_scores=a.constant_scores,
                keys=[k for r in mine for k in sorted(_ok_keys(r))] if complete else []))
        extra = dict(friedman=None if final.friedman_p is None else Friedman(statistic=final.friedman_statistic,
                                                                             p=final.friedman_p),
                     critical_difference=final.critical_difference, analysis=Analysis.of(final),
                     analysis_pruned_recal=Analysis.of(recal), control=lb.control_of(section.track),
                     control_ran=any(r.name == lb.control_of(section.track) and r.finals for r in rows),
                     power=[_power(p) for p in lb.power_cells(rows, "final").values()],
                     power_pruned_recal=[_power(p) for p in lb.power_cells(rows, "pruned_recal").values()])
    runtime = lat.pareto_runtime([rec for r in visible for rec in r.records])
    points = [Point(name=r.name, speedup=r.speedup, achieved=r.achieved, final=Stat.of(r.final),
                    latency_speedup=_speedup_in(r, runtime), rank=r.rank, pareto=False)
              for r in visible if r.final.mean is not None]
    timed = [p for p in points if p.latency_speedup is not None]
    for i in pareto([(p.latency_speedup, p.final.mean) for p in timed]):
        timed[i].pareto = True
    cells = [r for r in rows if r.rank is not None and (target is None or r.speedup == target)]
    ranked_per_cell = Counter(r.setting for r in cells)
    single = any(r.final.n == 1 and ranked_per_cell[r.setting] > 1 for r in cells)
    note = ("a method with one seed cannot be separated from any other (no test is possible), so it shares their "
            "rank: run more seeds to rank it" if single else "")
    return BoardSection(track=section.track, track_hash=section.track_hash, base_sha256=section.base_sha256,
                        label=section.label, runs=sum(len(r.records) for r in rows), speedups=sorted({r.speedup for r in rows}),
                        entries=entries, average=average, points=points, note=note, latency_runtime=runtime,
                        **extra)


def _speedup_in(row: lb.Row, runtime: str) -> Optional[float]:
    cell = row.latency.get(runtime)
    return None if cell is None else cell.speedup


def board(records: list[ResultRecord], track: str, setting: Optional[str] = None, view: str = AVERAGE,
          importance: Optional[list[str]] = None, regularizers: Optional[list[str]] = None) -> Leaderboard:
    """The board of ``track`` for ``setting`` (default: the one with most runs) and ``view`` (``"<speedup>x"`` or
    ``"average"``), one section per base checkpoint and track version; only the entries of the given importance
    methods and regularizers (``"-"`` = none) are shown when given. Bad input raises :class:`HarnessError`."""
    rs = [r for r in records if r.track.id == track]
    if not rs:
        raise HarnessError(f"no records of track {track!r}")
    counts = Counter(lb.setting_label(r.strategy, r.recipe) for r in rs)
    settings = sorted(counts, key=lambda s: (-counts[s], s))
    if setting is None:
        setting = settings[0]
    elif setting not in counts:
        raise HarnessError(f"track {track} has no runs in setting {setting!r}; its settings: {', '.join(settings)}")
    target = parse_view(view)
    rs = [r for r in rs if lb.setting_label(r.strategy, r.recipe) == setting]  # whole cells: ranks do not change
    rows = lb.rows(rs)

    def shown(method: str, regularizer: str) -> bool:
        return (not importance or method in importance) and (not regularizers or regularizer in regularizers)

    sections = [_section(s, srows, target, shown) for s, srows in lb.sections(rows).items()]
    speedups = sorted({r.speedup.target for r in rs})
    flagged = any(r.constant_scores for r in rows if shown(r.method, r.regularizer)
                  and (target is None or r.speedup == target))
    return Leaderboard(
        track=track, metric=rs[0].metric.name, setting=setting, settings=settings,
        view=AVERAGE if target is None else f"{target:g}x", views=[AVERAGE] + [f"{s:g}x" for s in speedups],
        speedups=speedups, methods=sorted({r.method.id for r in rs}),
        regularizers=sorted({r.regularizer.id if r.regularizer else "-" for r in rs}),
        importance=list(importance or []), regularizer=list(regularizers or []), warnings=lb.warnings(rs),
        legend=lb.LEGEND, flag_legend=lb.FLAG_LEGEND if flagged else None, average_legend=AVERAGE_LEGEND,
        filter_legend=FILTER_LEGEND, sections=sections)


def leaders(b: Leaderboard) -> list[AverageEntry]:
    """The leader of the Average view of ``b``'s section with most runs: the best mean rank (several when they tie
    exactly), named only when Friedman's test rejects and the critical difference separates it from some method;
    else none ("no separated leader")."""
    if not b.sections:
        return []
    section = max(b.sections, key=lambda s: s.runs)
    avg = [a for a in section.average if a.mean_rank is not None]
    if not avg or section.friedman is None or section.friedman.p >= stats.ALPHA:
        return []
    best = min(a.mean_rank for a in avg)
    return [a for a in avg if a.mean_rank == best and a.ahead_of]
