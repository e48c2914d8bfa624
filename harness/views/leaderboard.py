"""Leaderboards, computed only from result records.

**Sections.** Records are first split by (track id, track hash, base checkpoint sha256): a leaderboard
cell only ever pools runs that started from the same base checkpoint of the same track setting, and two
sections of one track are never averaged or ranked together (:func:`base_warnings` names them in one
line per track).

**Cells.** One row per (section, speedup, strategy, retraining recipe, method (and its version and
hyperparameters where a section holds several, :func:`variants`), regularizer): n, mean,
sample standard deviation and 95% confidence interval over seeds of the final metric, of the metric after
pruning (``pruned``) and after pruning with BatchNorm re-estimated (``pruned_recal``)
(:mod:`harness.views.stats`). Failed runs are counted and shown, never silently dropped.

**Ranks** are per (section, speedup, strategy, recipe) on the final metric: competition ranks with ties
from two-sided tests at 5% (paired t-test by seed where the seeds pair, else Welch), Holm-corrected over
every pair of the cell; a method's rank is 1 + the number of methods significantly better than it.

**The Average view** (:func:`average`, :func:`analysis`) uses all the evidence of a (section, strategy,
recipe): the critical-difference analysis of :mod:`harness.views.cd` over the blocks (speedup, seed) on the
final metric and on Pruned+BN (Friedman, Nemenyi's critical difference), each method against the track's
control per speedup (Holm over k − 1; :func:`control_cells`), and what each cell could detect
(:func:`power_cells`); :func:`to_json` is ``leaderboard --format json``, :func:`seeds_needed` is
``sweep --dry-run --target-difference``.

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

from harness.labels import label_of, run_label, short
from harness.views import cd, stats
from harness.views import latency as lat
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


@dataclass(frozen=True)
class Section:
    """What every cell of a leaderboard section shares: the track (id and hash) and the base checkpoint."""

    track: str
    track_hash: str
    base_sha256: Optional[str]
    round_to: int = 1  # the track's pruning.round_to (in its hash too): said in the label when not 1

    @property
    def label(self) -> str:
        return (f"{self.track} · base {short(self.base_sha256)} · track hash {short(self.track_hash)}"
                + (f" · round_to {self.round_to}" if self.round_to != 1 else ""))

    @property
    def sort_key(self) -> tuple[str, str, str]:
        return (self.track, self.base_sha256 or "", self.track_hash)


def section_of(r: ResultRecord) -> Section:
    return Section(r.track.id, r.track.hash, r.provenance.checkpoint_sha256, r.round_to)


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
    latency_speedup: Optional[float] = None  # measured, batch 1: the eager cell's (its median run's)
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
    #: ``@version[ hyperparameters]`` when the section holds several versions or settings of the method
    variant: str = ""

    @property
    def track(self) -> str:
        return self.section.track

    @property
    def name(self) -> str:
        return run_label(self.method, self.regularizer, self.variant)

    @property
    def setting(self) -> tuple:
        """The cell this row is ranked in: (section, speedup, strategy, recipe)."""
        return (self.section, self.speedup, self.strategy, self.recipe)


def run_name(r: ResultRecord, recipe: bool = True) -> str:
    """``method[+regularizer]``, and `` (retrain <recipe>)`` for a recipe-swap run."""
    return label_of(r) + (f" (retrain {r.recipe})" if recipe and r.recipe else "")


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


def _setting_of(m) -> tuple:
    return (m.version, tuple(sorted((k, str(v)) for k, v in m.hyperparameters.items())))


def variants(records: list[ResultRecord]) -> dict[tuple, str]:
    """(section, method id, (version, hyperparameters)) -> the row suffix naming the variant: ``""`` where a
    section holds one version and setting of the method, else ``@version`` (and its hyperparameters where
    versions alone do not tell the variants apart)."""
    seen: dict[tuple, set] = defaultdict(set)
    for r in records:
        seen[(section_of(r), r.method.id)].add(_setting_of(r.method))
    out = {}
    for (section, method), settings in seen.items():
        versions_differ = len({v for v, _ in settings}) == len(settings)
        for v, hp in settings:
            out[(section, method, (v, hp))] = "" if len(settings) == 1 else f"@{v}" + (
                "" if versions_differ else " " + (",".join(f"{k}={x}" for k, x in hp) or "defaults"))
    return out


def duplicate_warnings(records: list[ResultRecord]) -> list[str]:
    """One line per row with several ok runs of one seed (same method variant, cell and seed): only the first by
    run key is counted."""
    seen: dict[tuple, list[str]] = defaultdict(list)
    for r in records:
        if r.status == "ok":
            seen[(section_of(r), r.speedup.target, r.strategy, r.recipe, r.method.id, _setting_of(r.method),
                  r.regularizer.id if r.regularizer else "-", r.seed)].append(r.run_key)
    return [f"warning: {k[0].track} {k[4]} {k[1]:g}x {setting_label(k[2], k[3])}: {len(v)} ok runs of seed {k[7]} "
            f"(run keys {', '.join(x[:12] for x in sorted(v))}); only the first is counted"
            for k, v in seen.items() if len(v) > 1]


def _one_per_seed(ok: list[ResultRecord]) -> list[ResultRecord]:
    first: dict[int, ResultRecord] = {}
    for r in sorted(ok, key=lambda r: r.run_key):
        first.setdefault(r.seed, r)
    return sorted(first.values(), key=lambda r: r.seed)


def rows(records: list[ResultRecord]) -> list[Row]:
    """Every cell of ``records``, ranked, sorted by section, strategy, recipe, speedup and rank. Several versions
    or hyperparameter settings of one method are separate rows (:func:`variants`); several ok runs of one seed in
    a row count once (:func:`duplicate_warnings`)."""
    names = variants(records)
    use = stats.usable  # a non-finite or absurd metric counts as missing
    cells: dict[tuple, list[ResultRecord]] = defaultdict(list)
    for r in records:
        reg = r.regularizer.id if r.regularizer else "-"
        variant = names[(section_of(r), r.method.id, _setting_of(r.method))]
        cells[(section_of(r), r.speedup.target, r.strategy, r.recipe, r.method.id, variant, reg)].append(r)
    out = []
    for (section, speedup, strategy, recipe, method, variant, reg), rs in cells.items():
        ok = _one_per_seed([r for r in rs if r.status == "ok"])
        failed = [r for r in rs if r.status != "ok"]  # failed or cancelled
        diags = [r.diagnostics for r in ok if r.diagnostics is not None]
        timed = latency_cells(ok)
        out.append(Row(
            section=section, speedup=speedup, strategy=strategy, recipe=recipe, method=method, regularizer=reg,
            n_ok=len(ok), n_failed=len(failed), base=mean_or_none([use(r.metric.base) for r in rs]),
            final=stats.summarize(use(r.metric.final) for r in ok),
            pruned=stats.summarize(use(r.metric.pruned) for r in ok),
            pruned_recal=stats.summarize(use(r.metric.pruned_recal) for r in ok),
            delta=stats.summarize(use(r.metric.delta) for r in ok),
            achieved=mean_or_none([r.speedup.achieved for r in ok]),
            params_ratio=mean_or_none([r.params.pruned / r.params.base for r in ok if r.params.base]),
            step_s=mean_or_none([r.timing.step_s for r in ok]),
            reg_s=mean_or_none([r.timing.reg_s for r in ok]),
            latency_speedup=timed[lat.EAGER].speedup if lat.EAGER in timed else None, latency=timed,
            constant_scores=any(d.all_constant for d in diags),
            tied_fraction=mean_or_none([d.tied_fraction for d in diags]),
            finals={r.seed: use(r.metric.final) for r in ok if use(r.metric.final) is not None},
            recals={r.seed: use(r.metric.pruned_recal) for r in ok if use(r.metric.pruned_recal) is not None},
            error=failed[0].error if failed and not ok else "", records=rs, variant=variant))
    ranked = rankings(out)
    for row in out:
        row.rank = ranked[row.setting].ranks.get(row.name)
    return sorted(out, key=lambda r: (r.section.sort_key, r.strategy, r.recipe or "", r.speedup, r.rank or 10**9,
                                      -(r.final.mean if r.final.mean is not None else -1e300), r.method,
                                      r.variant, r.regularizer))


def sections(rs: list[Row]) -> dict[Section, list[Row]]:
    """``rs`` grouped by section, in order."""
    out: dict[Section, list[Row]] = {}
    for r in rs:
        out.setdefault(r.section, []).append(r)
    return out


# ------------------------------------------------------------------------------------ the Average view

#: the two metrics the Average view analyses: the leaderboard's (after retraining) and Pruned+BN (before it)
ANALYSED = {"final": "Final", "pruned_recal": "Pruned+BN"}


def control_of(track: str) -> str:
    """The control of ``track``'s comparisons: the registered track's ``control`` (Random unless it names
    another); Random for a track that is not registered here."""
    try:
        from harness.tracks import registry
        return registry().get(track).control
    except Exception:  # an uploaded or retired track: records carry only its id and hash
        return cd.DEFAULT_CONTROL


def groups(rs: list[Row]) -> dict[tuple, list[Row]]:
    """``rs`` by what the Average view analyses together: (section, strategy, recipe), in order."""
    out: dict[tuple, list[Row]] = {}
    for r in rs:
        out.setdefault((r.section, r.strategy, r.recipe), []).append(r)
    return out


def _values(row: Row, metric: str) -> dict[int, float]:
    return row.finals if metric == "final" else row.recals


def analysis(rs: list[Row], metric: str = "final") -> cd.Analysis:
    """The critical-difference analysis (:mod:`harness.views.cd`) of the rows of one (section, strategy, recipe):
    blocks (speedup, seed), the rows' per-seed values of ``metric``."""
    blocks: dict[tuple, dict[str, float]] = defaultdict(dict)
    for row in rs:
        for seed, v in _values(row, metric).items():
            blocks[(row.speedup, seed)][row.name] = v
    return cd.analyse(blocks, metric, groups={b: b[0] for b in blocks})


def across_tracks(rs: list[Row], metric: str = "final") -> Optional[cd.Analysis]:
    """The analysis over blocks (track, speedup, seed) of several tracks, on the methods every track ran (ranks are
    scale-free, so top-1 and mAP blocks mix); ``None`` with fewer than 2 tracks or 3 shared methods. Sections
    of one track are never pooled: each track contributes one (section, strategy), the one with most rows.
    Rows of a recipe-swap are left out."""
    rs = [r for r in rs if r.recipe is None]
    count: dict[tuple, int] = defaultdict(int)
    for r in rs:
        count[(r.section, r.strategy)] += 1
    chosen: dict[str, tuple] = {}
    for (section, strategy), n in sorted(count.items(), key=lambda kv: (-kv[1], kv[0][0].sort_key, kv[0][1])):
        chosen.setdefault(section.track, (section, strategy))
    if len(chosen) < 2:
        return None
    rs = [r for r in rs if chosen[r.track] == (r.section, r.strategy)]
    shared = set.intersection(*({r.name for r in rs if r.track == t} for t in chosen))
    if len(shared) < 3:
        return None
    blocks: dict[tuple, dict[str, float]] = defaultdict(dict)
    for row in rs:
        if row.name in shared:
            for seed, v in _values(row, metric).items():
                blocks[(row.track, row.speedup, seed)][row.name] = v
    return cd.analyse(blocks, metric, groups={b: b[:2] for b in blocks})


def control_cells(rs: list[Row], metric: str = "final", control: Optional[str] = None
                  ) -> dict[float, list[cd.ControlTest]]:
    """Per speedup of one (section, strategy, recipe): each row against the control (Holm over k − 1)."""
    out = {}
    for speedup in sorted({r.speedup for r in rs}):
        cell = [r for r in rs if r.speedup == speedup]
        ctl = control or control_of(cell[0].track)
        out[speedup] = cd.control_tests({r.name: _values(r, metric) for r in cell}, ctl)
    return out


@dataclass(frozen=True)
class Power:
    """What a cell could detect: the pooled standard deviation of the per-seed differences to the control, the
    (median) seeds shared with it, and the minimum detectable difference at 80% power and level 5% / (k − 1)."""

    speedup: float
    sd: Optional[float]
    n: int
    comparisons: int
    mdd: Optional[float]
    #: some entry shares the control's seeds (>= 2): the paired test runs (``sd`` is None when none spreads)
    paired: bool = False


def power_cells(rs: list[Row], metric: str = "final", control: Optional[str] = None) -> dict[float, Power]:
    """Per speedup of one (section, strategy, recipe): :class:`Power` against the control."""
    out = {}
    for speedup in sorted({r.speedup for r in rs}):
        cell = [r for r in rs if r.speedup == speedup]
        samples = {r.name: _values(r, metric) for r in cell}
        ctl = control or control_of(cell[0].track)
        sd, n = cd.difference_sd(samples, ctl)
        m = max(1, sum(1 for v in samples.values() if v) - 1)
        base = samples.get(ctl) or {}
        paired = len(base) >= 2 and any(set(v) == set(base) for k, v in samples.items() if k != ctl)
        out[speedup] = Power(speedup, sd, n, m, None if sd is None else cd.minimum_detectable_difference(sd, n, m),
                             paired)
    return out


@dataclass
class AverageRow:
    """The Average view: one method's mean rank over the blocks (speedup, seed) of a (section, strategy,
    recipe) on the final metric (:func:`analysis`), the methods it is separated from, and its comparisons with
    the control per speedup."""

    section: Section
    strategy: str
    recipe: Optional[str]
    method: str
    regularizer: str
    mean_rank: Optional[float]  # None: left out of the analysis (no ok run at some speedup)
    ranked: int  # speedups at which the method has a per-cell rank
    speedups: int  # speedups of the section
    constant_scores: bool = False
    better_than: list[str] = field(default_factory=list)  # separated by the critical difference, worse
    worse_than: list[str] = field(default_factory=list)
    versus_control: dict[float, cd.ControlTest] = field(default_factory=dict)  # speedup -> test (final metric)
    variant: str = ""  # as Row.variant

    @property
    def name(self) -> str:
        return run_label(self.method, self.regularizer, self.variant)


def average(rs: list[Row]) -> list[AverageRow]:
    """The Average view of every (section, strategy, recipe): best mean rank first, rows left out of the
    analysis last."""
    out = []
    for (section, strategy, recipe), group in groups(rs).items():
        a = analysis(group, "final")
        versus = control_cells(group, "final")
        by_name: dict[str, list[Row]] = defaultdict(list)
        for r in group:
            by_name[r.name].append(r)
        for name, mine in by_name.items():
            out.append(AverageRow(
                section, strategy, recipe, mine[0].method, mine[0].regularizer, a.mean_ranks.get(name),
                sum(r.rank is not None for r in mine), len({r.speedup for r in group}),
                any(r.constant_scores for r in mine), a.better_than(name) if name in a.mean_ranks else [],
                [b for b in a.names if name in a.better_than(b)],
                {s: t for s, tests in versus.items() for t in tests if t.name == name}, mine[0].variant))
    return sorted(out, key=lambda a: (a.section.sort_key, a.strategy, a.recipe or "", a.mean_rank is None,
                                      a.mean_rank or 0.0, a.method, a.regularizer))


def plural(n: int, word: str) -> str:
    """``1 method``, ``2 methods``."""
    return f"{n} {word}{'' if n == 1 else 's'}"


def left_out(a: cd.Analysis) -> str:
    """Which methods the analysis left out and why ("" when none)."""
    parts = []
    if a.excluded:
        parts.append(f"left out (no ok run at some speedup): {', '.join(map(str, a.excluded))}")
    if a.incomplete:
        parts.append("left out (failed runs leave them without a value in some blocks (speedup, seed), and "
                     "Friedman's test needs complete blocks): "
                     + ", ".join(f"{n} ({plural(m, 'block')} missing)" for n, m in a.incomplete.items()))
    return "; ".join(parts)


def analysis_line(a: cd.Analysis) -> str:
    """One line: Friedman's test, the critical difference, what it separates."""
    why = left_out(a)
    if a.friedman_p is None:
        if not a.names:
            return f"{ANALYSED[a.metric]}: no method has a value in every block (speedup, seed)" + (
                f"; {why}" if why else "")
        return (f"{ANALYSED[a.metric]}: {plural(a.k, 'method')} over {plural(a.n_blocks, 'block')} (speedup, seed): "
                f"too few for Friedman's test (it needs 3 methods and 2 blocks)" + (f"; {why}" if why else ""))
    line = (f"{ANALYSED[a.metric]}: Friedman χ² = {a.friedman_statistic:.1f}, p = {cd.fmt_p(a.friedman_p)} "
            f"({a.k} methods, {a.n_blocks} blocks (speedup, seed)); Nemenyi critical difference "
            f"{a.critical_difference:.2f} ranks at 5%: ")
    pairs = a.separated()
    if not a.rejects:
        line += "Friedman's test does not reject, so no pair is separated"
    elif not pairs:
        line += "no two mean ranks are that far apart"
    else:
        best: dict = defaultdict(list)
        for x, y in pairs:
            best[x].append(y)
        def named(ys) -> str:
            return ", ".join(f"{y} ({a.mean_ranks[y]:.2f})" for y in ys)

        line += "; ".join(f"{x} ({a.mean_ranks[x]:.2f}) ahead of {named(ys)}" for x, ys in best.items())
    if why:
        line += f"; {why}"
    return line


def _versus(t: Optional[cd.ControlTest]) -> str:
    if t is None:
        return "-"
    if t.test == "none":  # one seed on a side, or no spread at all
        return f"{t.diff:+.2f} (no test)"
    return f"{t.diff:+.2f} (p {cd.fmt_p(t.p_adjusted)}){' *' if t.significant else ''}"


def average_columns(rs: list[Row]) -> list[str]:
    """The Average table's columns for one (section, strategy, recipe)."""
    control = control_of(rs[0].track) if rs else cd.DEFAULT_CONTROL
    return (["Strategy", "Importance", "Regularizer", "Mean rank", "Ahead of (CD)"]
            + [f"vs {control} {s:g}x" for s in sorted({r.speedup for r in rs})])


def average_cells(a: AverageRow, speedups: list[float]) -> list[str]:
    """A row of the Average table; ``speedups``: the section's (the control's own cells say "control")."""
    control = not a.versus_control and a.name == control_of(a.section.track)
    return ([setting_label(a.strategy, a.recipe), a.method + a.variant + (f" {FLAG}" if a.constant_scores else ""),
             a.regularizer, "left out" if a.mean_rank is None else f"{a.mean_rank:.2f}",
             ", ".join(a.better_than) or "-"]
            + ["control" if control else _versus(a.versus_control.get(s)) for s in speedups])


def power_line(rs: list[Row], metric: str = "final") -> str:
    """The minimum detectable difference to the control per speedup, in one line (or why there is none)."""
    cells = power_cells(rs, metric)
    control = control_of(rs[0].track)
    if not any(r.name == control and _values(r, metric) for r in rs):
        return (f"{ANALYSED[metric]}: the control {control} has no ok run in this section: no comparisons with it, "
                f"no power to report")
    parts = [f"{p.speedup:g}x {p.mdd:.2f} (n = {p.n}, sd of the differences {p.sd:.2f})" for p in cells.values()
             if p.mdd is not None]
    if not parts and any(p.paired for p in cells.values()):
        return (f"{ANALYSED[metric]}: the per-seed differences to {control} do not spread in any cell (paired t "
                f"cannot run; Welch's test, or none, is used): no power to report")
    if not parts:
        return f"{ANALYSED[metric]}: no cell has 2 seeds shared with {control}: no power to report"
    m = max(p.comparisons for p in cells.values())
    return (f"{ANALYSED[metric]}, smallest difference to {control} a cell detects with 80% power (paired t, "
            f"5% / {m}, from the entries the paired test compares: the control's seeds, differences that spread): "
            + "; ".join(parts))


AVERAGE_LEGEND = ("Average: the critical-difference analysis (Demšar 2006). Within each block (speedup, seed) the "
                  "methods are ranked on the metric (1 = best, ties share); Mean rank is the mean over the blocks. "
                  "Friedman's test asks whether the mean ranks differ more than chance would make them; where it "
                  "rejects, two methods whose mean ranks are more than the Nemenyi critical difference (CD) apart "
                  "are separated (Ahead of). vs control: the mean difference to the control per speedup (paired "
                  "t-test by seed, Holm over the k - 1 comparisons with the control; * p < 0.05).")


def average_markdown(rs: list[Row]) -> str:
    """The Average view of one section's rows: per (strategy, recipe), the analysis of Final with its table, the
    analysis of Pruned+BN, the power lines."""
    parts = []
    for (_, strategy, recipe), group in groups(rs).items():
        if len({r.speedup for r in group}) < 2 and max((r.final.n for r in group), default=0) < 2:
            continue
        avg = average(group)
        parts.append(f"Average view ({setting_label(strategy, recipe)}): {analysis_line(analysis(group, 'final'))}."
                     + (f" {analysis_line(analysis(group, 'pruned_recal'))}."
                        if any(r.recals for r in group) else "") + "\n")
        speedups = sorted({r.speedup for r in group})
        parts.append(table(average_columns(group), [average_cells(a, speedups) for a in avg]))
        parts.append(power_line(group, "final") + ".\n")
    return "\n".join(parts)


def analysis_json(a: Optional[cd.Analysis]) -> Optional[dict]:
    """The analysis as the JSON outputs carry it."""
    if a is None:
        return None
    return {"metric": a.metric, "friedman": None if a.friedman_p is None else
            {"statistic": a.friedman_statistic, "p": a.friedman_p},
            "critical_difference": a.critical_difference, "blocks": a.n_blocks, "methods": a.k,
            "mean_rank": {str(n): a.mean_ranks[n] for n in a.names}, "excluded": [str(n) for n in a.excluded],
            "incomplete": {str(n): m for n, m in a.incomplete.items()},
            "separated": [[str(x), str(y)] for x, y in a.separated()],
            "cliques": [[str(n) for n in c] for c in a.cliques()]}


def to_json(rs: list[Row]) -> dict:
    """``leaderboard --format json``: per section and setting, the cells and the Average view (Friedman, the
    critical difference, each row's mean rank, the comparisons with the control, the power)."""
    out = []
    for (section, strategy, recipe), group in groups(rs).items():
        final, recal = analysis(group, "final"), analysis(group, "pruned_recal")
        versus = {m: control_cells(group, m) for m in ANALYSED}
        power = {m: power_cells(group, m) for m in ANALYSED}
        cells_out = []
        for r in group:
            tests = {m: next((t for t in versus[m][r.speedup] if t.name == r.name), None) for m in ANALYSED}
            cells_out.append({
                "speedup": r.speedup, "importance": r.method, "regularizer": r.regularizer, "name": r.name,
                "n": r.final.n, "n_failed": r.n_failed, "rank": r.rank, **{
                    m: {"mean": getattr(r, m).mean, "std": getattr(r, m).std, "ci95_low": getattr(r, m).ci95_low,
                        "ci95_high": getattr(r, m).ci95_high, "seeds": {str(k): v for k, v in
                                                                        sorted(_values(r, m).items())}}
                    for m in ANALYSED}, "pruned_mean": r.pruned.mean,
                "versus_control": {m: None if t is None else {"diff": t.diff, "p": t.p, "p_holm": t.p_adjusted,
                                                              "significant": t.significant, "test": t.test}
                                   for m, t in tests.items()}})
        rows_out = [{"name": a.name, "importance": a.method, "regularizer": a.regularizer, "mean_rank": a.mean_rank,
                     "pruned_recal_mean_rank": recal.mean_ranks.get(a.name), "ahead_of": a.better_than,
                     "behind": a.worse_than, "ranked": a.ranked, "speedups": a.speedups,
                     "constant_scores": a.constant_scores} for a in average(group)]
        out.append({
            "track": section.track, "track_hash": section.track_hash, "base_sha256": section.base_sha256,
            "strategy": strategy, "recipe": recipe, "control": control_of(section.track), "cells": cells_out,
            "average": {"friedman": analysis_json(final)["friedman"],
                        "critical_difference": final.critical_difference, "rows": rows_out,
                        "final": analysis_json(final), "pruned_recal": analysis_json(recal),
                        "power": {m: [{"speedup": p.speedup, "sd": p.sd, "n": p.n, "comparisons": p.comparisons,
                                       "minimum_detectable_difference": p.mdd} for p in power[m].values()]
                                  for m in ANALYSED}}})
    return {"sections": out, "across_tracks": {m: analysis_json(across_tracks(rs, m)) for m in ANALYSED}}


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
    method = r.method + r.variant + (f" {FLAG}" if r.constant_scores else "")
    return [r.track, f"{r.speedup:g}x", strategy, str(r.rank or "-"), method, r.regularizer, n, _f(r.base),
            stats.fmt(r.pruned), stats.fmt(r.pruned_recal), final, _f(r.delta.mean, "+.2f"), params, achieved,
            latency, lat.text(r.latency.get("onnxruntime")), _f(r.step_s, ".3f"), _f(r.reg_s, ".1f")]


def table(columns: list[str], body: list[list[str]]) -> str:
    """A markdown table (``|`` inside cells escaped)."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in body]
    return "\n".join(lines) + "\n"


def markdown(rs: list[Row], average_view: bool = True) -> str:
    """Sections (a heading each when there are several) with their tables, the Average view, the legend."""
    by_section = sections(rs)
    parts = []
    for section, srows in by_section.items():
        if len(by_section) > 1:
            parts.append(f"### {section.label}\n")
        parts.append(table(COLUMNS, [cells(r) for r in srows]))
        if average_view:
            text = average_markdown(srows)
            if text:
                parts.append(text)
    if average_view:
        for metric in ANALYSED:
            across = across_tracks(rs, metric)
            if across is not None:
                parts.append(f"Across tracks (blocks: track, speedup, seed; the methods every track ran; one section "
                             f"and strategy per track, the one with most rows): "
                             f"{analysis_line(across)}; mean ranks: "
                             + ", ".join(f"{n} {across.mean_ranks[n]:.2f}" for n in across.names) + ".\n")
    if rs:
        parts.append(LEGEND + " " + lat.LEGEND + (" " + AVERAGE_LEGEND if average_view else "")
                     + (" " + FLAG_LEGEND if any(r.constant_scores for r in rs) else "") + "\n")
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
    return "".join(f"{w}\n\n" for w in warnings(records)) + markdown(rows(records))


def warnings(records: list[ResultRecord]) -> list[str]:
    """:func:`base_warnings` and :func:`duplicate_warnings`."""
    return base_warnings(records) + duplicate_warnings(records)


def constant_scores_warning(r: ResultRecord) -> Optional[str]:
    """One line when the run's method gave constant scores in every group, else ``None``."""
    d = r.diagnostics
    if d is None or not d.all_constant:
        return None
    return (f"warning: {run_name(r)} {r.speedup.target:g}x seed {r.seed}: the scores were constant in every group "
            f"({d.groups} groups), so the channels were chosen by the seeded tie-break alone (at random)")


# ------------------------------------------------------------------------------------ seeds by need

def seeds_needed(records: list[ResultRecord], difference: float) -> str:
    """``sweep --dry-run --target-difference D``: per section, setting, speedup and metric (Final, Pruned+BN), the
    measured standard deviation of the per-seed differences to the control, the seeds recorded, the difference
    they can detect (80% power, paired t at 5% / (k − 1)) and the seeds that would detect ``difference``
    (``>100000`` beyond the search). Raises ``ValueError`` (saying why) when no cell has a measured spread."""
    lines = [f"Seeds each cell needs to detect a difference of {difference:g} to the control with 80% power "
             f"(two-sided paired t-test by seed at 5% / (k − 1), Holm's first step; the spread is the cell's "
             f"measured standard deviation of the per-seed differences to the control):", "",
             "| section | setting | speedup | metric | sd of differences | seeds now | detectable now | seeds needed |",
             "|---|---|---|---|---|---|---|---|"]
    found = paired = False
    rs = rows(records)
    for (section, strategy, recipe), group in groups(rs).items():
        for metric, label in ANALYSED.items():
            for p in power_cells(group, metric).values():
                paired = paired or p.paired
                if p.sd is None:
                    continue
                found = True
                need = cd.fmt_seeds(cd.seeds_needed(p.sd, difference, p.comparisons))
                lines.append(f"| {section.track} · base {short(section.base_sha256)} | "
                             f"{setting_label(strategy, recipe)} | {p.speedup:g}x | {label} | {p.sd:.2f} | {p.n} | "
                             f"{_f(p.mdd)} | {need} |")
    if not found and paired:
        raise ValueError("the per-seed differences to the control do not spread in any cell (every seed gives the "
                         "same difference), so the spread between seeds is not measured")
    if not found:
        raise ValueError("no cell has two seeds shared with its control: the between-seed spread cannot be "
                         "measured; run a sweep with at least 2 seeds (the control included) first, or point --out "
                         "at its results")
    return "\n".join(lines)
