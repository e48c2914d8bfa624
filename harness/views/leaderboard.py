"""Leaderboards, computed only from result records.

**Sections.** Records are first split by (track id, track hash, base checkpoint sha256): a leaderboard
cell only ever pools runs that started from the same base checkpoint of the same track setting, and two
sections of one track are never averaged or ranked together (:func:`base_warnings` names them in one
line per track).

**Cells.** One row per (section, speedup, strategy, retraining recipe, method, regularizer): n, mean,
sample standard deviation and 95% confidence interval over seeds of the final metric, of the metric after
pruning (``pruned``) and after pruning with BatchNorm re-estimated (``pruned_recal``)
(:mod:`harness.views.stats`). Failed runs are counted and shown, never silently dropped.

**Ranks** are per (section, speedup, strategy, recipe) on the final metric: competition ranks with ties
from two-sided tests at 5% (paired t-test by seed where the seeds pair, else Welch), Holm-corrected over
every pair of the cell; a method's rank is 1 + the number of methods significantly better than it.
:func:`average` is PruningBench's Average view: each method's mean rank over the speedups.

A method whose scores were constant in every group (the planner then pruned by its seeded tie-break
alone, i.e. at random) is flagged (``constant_scores``).
"""

from __future__ import annotations

import csv
import io
import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Optional

from harness.views import latency as lat
from harness.views import stats
from harness.views.stats import Summary
from specs.result import ResultRecord

#: the legend printed under markdown leaderboards
LEGEND = ("Final, Pruned, Pruned+BN: mean ± half-width of the 95% confidence interval of the mean over the n seeds "
          "(Student t); one seed: the value alone. Pruned+BN: after pruning, BatchNorm statistics re-estimated on "
          "the track's calibration images, before retraining. Rank: competition rank on Final at the 5% level "
          "(two-sided paired t-test by seed, else Welch; Holm-corrected over all pairs of a cell): rank = 1 + the "
          "number of methods significantly better, so methods no test separates share a rank.")
FLAG = "⚠"
FLAG_LEGEND = (f"{FLAG} the method's scores were constant in every group: it pruned by the seeded tie-break alone "
               f"(at random).")


def short(digest: Optional[str], n: int = 12) -> str:
    return (digest or "unknown")[:n]


@dataclass(frozen=True)
class Section:
    """What every cell of a leaderboard section shares: the track (id and hash) and the base checkpoint."""

    track: str
    track_hash: str
    base_sha256: Optional[str]

    @property
    def label(self) -> str:
        return f"{self.track} · base {short(self.base_sha256)} · track hash {short(self.track_hash)}"

    @property
    def sort_key(self) -> tuple[str, str, str]:
        return (self.track, self.base_sha256 or "", self.track_hash)


def section_of(r: ResultRecord) -> Section:
    return Section(r.track.id, r.track.hash, r.provenance.checkpoint_sha256)


@dataclass
class Row:
    section: Section
    speedup: float
    strategy: str
    method: str
    regularizer: str
    n_ok: int
    n_failed: int
    base: Optional[float]
    final: Summary
    pruned: Summary
    pruned_recal: Summary
    delta: Summary
    achieved: Optional[float]
    params_ratio: Optional[float]
    step_s: Optional[float]
    reg_s: Optional[float]
    latency_speedup: Optional[float] = None  # measured, batch 1
    #: batch-1 latency speedup per runtime (eager PyTorch, ONNX Runtime...), with its interval
    latency: dict[str, lat.LatencyCell] = field(default_factory=dict)
    recipe: Optional[str] = None  # recipe-swap runs: the track recipe used for retraining
    rank: Optional[int] = None
    #: some run's scores were constant in every group (pruned by the seeded tie-break alone)
    constant_scores: bool = False
    tied_fraction: Optional[float] = None  # mean over runs (see specs.result.Diagnostics)
    finals: dict[int, float] = field(default_factory=dict)  # seed -> final metric (what the ranks test)
    recals: dict[int, float] = field(default_factory=dict)  # seed -> pruned_recal
    error: str = ""
    #: the records counted in this row (ok, failed and cancelled), in store order
    records: list[ResultRecord] = field(default_factory=list, repr=False, compare=False)

    @property
    def track(self) -> str:
        return self.section.track

    @property
    def name(self) -> str:
        return self.method + (f"+{self.regularizer}" if self.regularizer != "-" else "")

    @property
    def setting(self) -> tuple:
        """The cell this row is ranked in: (section, speedup, strategy, recipe)."""
        return (self.section, self.speedup, self.strategy, self.recipe)


def run_name(r: ResultRecord, recipe: bool = True) -> str:
    """``method[+regularizer]``, and `` (retrain <recipe>)`` for a recipe-swap run."""
    return (r.method.id + (f"+{r.regularizer.id}" if r.regularizer else "")
            + (f" (retrain {r.recipe})" if recipe and r.recipe else ""))


def setting_label(strategy: str, recipe: Optional[str]) -> str:
    """``strategy[ · retrain recipe]``: how a setting is named in tables and on the platform."""
    return strategy + (f" · retrain {recipe}" if recipe else "")


def mean_or_none(xs) -> Optional[float]:
    """The mean of the values of ``xs`` that are not ``None``; ``None`` when there are none."""
    xs = [x for x in xs if x is not None]
    return statistics.fmean(xs) if xs else None


def base_warnings(records: list[ResultRecord]) -> list[str]:
    """One line per track whose records come from more than one base checkpoint (or track version)."""
    by_track: dict[str, set[Section]] = defaultdict(set)
    for r in records:
        by_track[r.track.id].add(section_of(r))
    lines = []
    for track, secs in sorted(by_track.items()):
        if len(secs) > 1:
            named = ", ".join(f"base {short(s.base_sha256)} (track hash {short(s.track_hash)})"
                              for s in sorted(secs, key=lambda s: s.sort_key))
            lines.append(f"warning: records of {track} come from {len(secs)} base checkpoints or track versions: "
                         f"{named}; shown as separate sections, never averaged or ranked together")
    return lines


def rankings(rs: list[Row], metric: str = "final") -> dict[tuple, stats.Ranking]:
    """The ranking of every cell (:attr:`Row.setting`), keyed by row name, from the rows' per-seed values of
    ``metric`` (``final``, the leaderboard's ranks, or ``pruned_recal``)."""
    cells: dict[tuple, dict[str, dict[int, float]]] = defaultdict(dict)
    for row in rs:
        cells[row.setting][row.name] = row.finals if metric == "final" else row.recals
    return {setting: stats.rank(samples) for setting, samples in cells.items()}


def rows(records: list[ResultRecord]) -> list[Row]:
    """Every cell of ``records``, ranked, sorted by section, strategy, recipe, speedup and rank."""
    cells: dict[tuple, list[ResultRecord]] = defaultdict(list)
    for r in records:
        reg = r.regularizer.id if r.regularizer else "-"
        cells[(section_of(r), r.speedup.target, r.strategy, r.recipe, r.method.id, reg)].append(r)
    out = []
    for (section, speedup, strategy, recipe, method, reg), rs in cells.items():
        ok = [r for r in rs if r.status == "ok"]
        failed = [r for r in rs if r.status != "ok"]  # failed or cancelled
        diags = [r.diagnostics for r in ok if r.diagnostics is not None]
        out.append(Row(
            section=section, speedup=speedup, strategy=strategy, recipe=recipe, method=method, regularizer=reg,
            n_ok=len(ok), n_failed=len(failed), base=mean_or_none([r.metric.base for r in rs]),
            final=stats.summarize(r.metric.final for r in ok), pruned=stats.summarize(r.metric.pruned for r in ok),
            pruned_recal=stats.summarize(r.metric.pruned_recal for r in ok),
            delta=stats.summarize(r.metric.delta for r in ok),
            achieved=mean_or_none([r.speedup.achieved for r in ok]),
            params_ratio=mean_or_none([r.params.pruned / r.params.base for r in ok if r.params.base]),
            step_s=mean_or_none([r.timing.step_s for r in ok]),
            reg_s=mean_or_none([r.timing.reg_s for r in ok]),
            latency_speedup=mean_or_none([r.latency.speedup_batch1 for r in ok if r.latency]),
            latency=latency_cells(ok),
            constant_scores=any(d.all_constant for d in diags),
            tied_fraction=mean_or_none([d.tied_fraction for d in diags]),
            finals={r.seed: r.metric.final for r in ok},
            recals={r.seed: r.metric.pruned_recal for r in ok if r.metric.pruned_recal is not None},
            error=failed[0].error if failed and not ok else "", records=rs))
    ranked = rankings(out)
    for row in out:
        row.rank = ranked[row.setting].ranks.get(row.name)
    return sorted(out, key=lambda r: (r.section.sort_key, r.strategy, r.recipe or "", r.speedup, r.rank or 10**9,
                                      -(r.final.mean if r.final.mean is not None else -1e300), r.method,
                                      r.regularizer))


def sections(rs: list[Row]) -> dict[Section, list[Row]]:
    """``rs`` grouped by section, in order."""
    out: dict[Section, list[Row]] = {}
    for r in rs:
        out.setdefault(r.section, []).append(r)
    return out


def differs_from(rs: list[Row], reference: str = "random", metric: str = "final",
                 family: str = "all") -> dict[tuple, list[str]]:
    """Per cell (:attr:`Row.setting`) holding ``reference``: the rows whose ``metric`` is significantly different
    from the reference's. ``family="all"``: the tests and correction of the ranks (Holm over every pair of
    the cell); ``"reference"``: Holm over the comparisons with the reference only (many-to-one); ``"none"``:
    unadjusted p-values (expect ``alpha`` x the number of rows to pass by chance)."""
    out = {}
    for setting, ranking in rankings(rs, metric).items():
        if reference not in ranking.ranks:
            continue
        others = [n for n in ranking.order() if n != reference]
        if family == "all":
            out[setting] = [n for n in others if ranking.differs(n, reference)]
        else:
            tests = [ranking.comparison(n, reference) for n in others]
            adjusted = stats.holm([c.p for c in tests]) if family == "reference" else [c.p for c in tests]
            out[setting] = [n for n, q in zip(others, adjusted) if q < ranking.alpha]
    return out


@dataclass
class AverageRow:
    """PruningBench's Average view: one method's mean rank over the speedups of a section."""

    section: Section
    strategy: str
    recipe: Optional[str]
    method: str
    regularizer: str
    mean_rank: float
    ranked: int  # speedups at which the method was ranked
    speedups: int  # speedups of the section
    constant_scores: bool = False


def average(rs: list[Row]) -> list[AverageRow]:
    """Mean rank per method over each (section, strategy, recipe)'s speedups, best first."""
    groups: dict[tuple, list[Row]] = defaultdict(list)
    for r in rs:
        groups[(r.section, r.strategy, r.recipe)].append(r)
    out = []
    for (section, strategy, recipe), group in groups.items():
        by_speedup: dict[float, dict[tuple, int]] = defaultdict(dict)
        flagged = set()
        for r in group:
            if r.rank is not None:
                by_speedup[r.speedup][(r.method, r.regularizer)] = r.rank
            if r.constant_scores:
                flagged.add((r.method, r.regularizer))
        n_speedups = len({r.speedup for r in group})
        for (method, reg), (mean_rank, ranked) in stats.average_ranks(by_speedup.values()).items():
            out.append(AverageRow(section, strategy, recipe, method, reg, mean_rank, ranked, n_speedups,
                                  (method, reg) in flagged))
    return sorted(out, key=lambda a: (a.section.sort_key, a.strategy, a.recipe or "", -a.ranked, a.mean_rank,
                                      a.method, a.regularizer))


def _f(x: Optional[float], fmt: str = ".2f") -> str:
    return "n/a" if x is None else format(x, fmt)


COLUMNS = ["Track", "Speedup", "Strategy", "Rank", "Importance", "Regularizer", "n", "Base", "Pruned", "Pruned+BN",
           "Final", "Δ", "Params", "Achieved", "Latency", lat.LABELS["onnxruntime"], "Step (s)", "Reg (s)"]


def latency_cells(ok: list[ResultRecord]) -> dict[str, lat.LatencyCell]:
    """The batch-1 latency speedup of ``ok`` runs in every runtime one of them measured."""
    return {name: cell for name in lat.runtimes_of(ok) if (cell := lat.latency_cell(ok, name)) is not None}


def cells(r: Row) -> list[str]:
    final = "failed" if r.final.n == 0 else stats.fmt(r.final)
    n = f"{r.n_ok}" + (f" (+{r.n_failed} failed)" if r.n_failed else "")
    params = "n/a" if r.params_ratio is None else f"{100 * r.params_ratio:.1f}%"
    achieved = "n/a" if r.achieved is None else f"{r.achieved:.2f}x"
    latency = lat.text(r.latency.get(lat.EAGER))
    strategy = setting_label(r.strategy, r.recipe)
    method = r.method + (f" {FLAG}" if r.constant_scores else "")
    return [r.track, f"{r.speedup:g}x", strategy, str(r.rank or "-"), method, r.regularizer, n, _f(r.base),
            stats.fmt(r.pruned), stats.fmt(r.pruned_recal), final, _f(r.delta.mean, "+.2f"), params, achieved,
            latency, lat.text(r.latency.get("onnxruntime")), _f(r.step_s, ".3f"), _f(r.reg_s, ".1f")]


def table(columns: list[str], body: list[list[str]]) -> str:
    """A markdown table (``|`` inside cells escaped)."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in body]
    return "\n".join(lines) + "\n"


def average_cells(a: AverageRow) -> list[str]:
    return [setting_label(a.strategy, a.recipe), a.method + (f" {FLAG}" if a.constant_scores else ""), a.regularizer,
            f"{a.mean_rank:.2f}", f"{a.ranked}/{a.speedups}"]


AVERAGE_COLUMNS = ["Strategy", "Importance", "Regularizer", "Mean rank", "Speedups ranked"]


def markdown(rs: list[Row], average_view: bool = True) -> str:
    """Sections (a heading each when there are several) with their tables, the Average view, the legend."""
    by_section = sections(rs)
    parts = []
    for section, srows in by_section.items():
        if len(by_section) > 1:
            parts.append(f"### {section.label}\n")
        parts.append(table(COLUMNS, [cells(r) for r in srows]))
        avg = average(srows)
        if average_view and len({r.speedup for r in srows}) > 1 and avg:
            parts.append(f"Average over speedups ({section.track}):\n\n" + table(AVERAGE_COLUMNS,
                                                                                [average_cells(a) for a in avg]))
    if rs:
        parts.append(LEGEND + " " + lat.LEGEND + (" " + FLAG_LEGEND if any(r.constant_scores for r in rs) else "")
                     + "\n")
    return "\n".join(parts)


#: per runtime: batch-1 speedup, its 95% interval, the uncertain flag (empty when not measured)
LATENCY_CSV = [f"{rt}_{k}" for rt in (lat.EAGER, "onnxruntime") for k in ("speedup_b1", "ci95_low", "ci95_high",
                                                                          "uncertain")]


def latency_csv(r: "Row") -> list:
    out = []
    for rt in (lat.EAGER, "onnxruntime"):
        c = r.latency.get(rt)
        out += ["", "", "", ""] if c is None else [c.speedup, "" if c.low is None else c.low,
                                                    "" if c.high is None else c.high, c.uncertain]
    return out


CSV_COLUMNS = ["track", "track_hash", "base_sha256", "speedup", "strategy", "recipe", "importance", "regularizer",
               "n", "mean", "std", "ci95_low", "ci95_high", "rank", "n_failed", "base",
               "pruned_mean", "pruned_std", "pruned_ci95_low", "pruned_ci95_high",
               "pruned_recal_mean", "pruned_recal_std", "pruned_recal_ci95_low", "pruned_recal_ci95_high",
               "delta_mean", "params_ratio", "achieved_speedup", "latency_speedup_b1", "step_s", "reg_s",
               "tied_fraction", "constant_scores", "error", *LATENCY_CSV]


def to_csv(rs: list[Row]) -> str:
    """One line per cell; ``n``, ``mean``, ``std``, ``ci95_low``, ``ci95_high``, ``rank`` are the final metric's
    (empty where undefined, e.g. std for n = 1)."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(CSV_COLUMNS)

    def s(x: Summary) -> list:
        return ["" if v is None else v for v in (x.mean, x.std, x.ci95_low, x.ci95_high)]

    for r in rs:
        w.writerow([r.track, r.section.track_hash, r.section.base_sha256 or "", r.speedup, r.strategy,
                    r.recipe or "", r.method, r.regularizer, r.final.n, *s(r.final), r.rank or "", r.n_failed,
                    r.base, *s(r.pruned), *s(r.pruned_recal), r.delta.mean, r.params_ratio, r.achieved,
                    r.latency_speedup, r.step_s, r.reg_s, r.tied_fraction, r.constant_scores, r.error,
                    *latency_csv(r)])
    return buf.getvalue()


def report(records: list[ResultRecord]) -> str:
    """The markdown leaderboard of ``records`` with the base-checkpoint warnings on top."""
    warnings = base_warnings(records)
    return "".join(f"{w}\n\n" for w in warnings) + markdown(rows(records))


def constant_scores_warning(r: ResultRecord) -> Optional[str]:
    """One line when the run's method gave constant scores in every group, else ``None``."""
    d = r.diagnostics
    if d is None or not d.all_constant:
        return None
    return (f"warning: {run_name(r)} {r.speedup.target:g}x seed {r.seed}: the scores were constant in every group "
            f"({d.groups} groups), so the channels were chosen by the seeded tie-break alone (at random)")
