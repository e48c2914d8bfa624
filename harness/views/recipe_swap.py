"""Recipe swap (Wang et al. 2023, "Why is the state of neural network pruning so confusing?",
arXiv 2301.05219): does a ranking of pruning methods survive a change of the retraining recipe?

Papers compare method A retrained with its own recipe FT_A against B with FT_B.
The recipe-swap mode runs every method under every recipe (A+FT_A, A+FT_B,
B+FT_A, B+FT_B, ...) and reports, per speedup, the ranking under each recipe,
whether it is the same under all of them (and Kendall's tau between each two
recipes), each pair's winner under each recipe, and, when each method's "own"
recipe is given, whether the as-published comparison (A+FT_A vs B+FT_B) agrees
with the same-recipe comparisons.

Computed only from result records; a cell with no successful run is reported as
missing, and no verdict is drawn from an incomplete matrix. Records made from different
base checkpoints (or track versions) are never compared: :func:`analyse_sections` gives
one report per section (:class:`harness.views.leaderboard.Section`). Cells are summarized
with :mod:`harness.views.stats` (n, mean, std, 95% CI); a pair's winner under a recipe is
marked "within noise" when the two are not significantly different at 5% (paired t-test
by seed, else Welch; Holm over the pairs under that recipe; always with one seed).
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Optional

from harness.views import stats
from harness.views.leaderboard import Section, run_name, section_of
from harness.views.stats import Summary, kendall_tau
from specs.result import ResultRecord
from specs.track import TRACK_RECIPE


@dataclass
class Pair:
    a: str
    b: str
    winners: dict[str, Optional[str]]  # recipe -> winner (None: tie)
    published: Optional[str] = None  # "a", "b" or "tie": a with its own recipe vs b with its own; None without
    #: ``own`` for both
    holds: bool = False  # the same winner under every recipe
    #: recipes under which the two are not significantly different (5%, Holm; always with one seed)
    within_noise: set[str] = field(default_factory=set)


@dataclass
class SwapReport:
    track: str
    speedup: float
    metric: str
    methods: list[str]
    recipes: list[str]
    cells: dict[tuple[str, str], Summary] = field(default_factory=dict)
    missing: list[tuple[str, str]] = field(default_factory=list)
    rankings: dict[str, list[str]] = field(default_factory=dict)
    kendall: dict[tuple[str, str], float] = field(default_factory=dict)
    pairs: list[Pair] = field(default_factory=list)
    own: dict[str, str] = field(default_factory=dict)
    section: Optional[Section] = None
    #: per recipe: competition ranks with ties (harness.views.stats.rank)
    tie_ranks: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        return not self.missing

    def misleading(self) -> list[Pair]:
        """Pairs whose as-published winner differs from their winner under some common recipe."""
        return [p for p in self.pairs if p.published is not None
                and any((w or "tie") != p.published for w in p.winners.values())]

    @property
    def holds(self) -> Optional[bool]:
        """The ranking is the same under every recipe (None: incomplete matrix)."""
        if not self.complete:
            return None
        return all(p.holds for p in self.pairs)


def _winner(x: float, y: float, a: str, b: str) -> Optional[str]:
    return a if x > y else b if y > x else None


def analyse_sections(records: list[ResultRecord], methods: list[str], recipes: list[str], speedup: float,
                     own: Optional[dict[str, str]] = None) -> list[SwapReport]:
    """:func:`analyse` for each section (track version and base checkpoint) that has records of ``speedup``."""
    by_section: dict[Section, list[ResultRecord]] = defaultdict(list)
    for r in records:
        if r.speedup.target == speedup:
            by_section[section_of(r)].append(r)
    ordered = sorted(by_section.items(), key=lambda kv: kv[0].sort_key)
    return [analyse(rs, methods, recipes, speedup, own) for _, rs in ordered]


def analyse(records: list[ResultRecord], methods: list[str], recipes: list[str], speedup: float,
            own: Optional[dict[str, str]] = None) -> SwapReport:
    """The recipe-swap report for ``methods`` x ``recipes`` at ``speedup`` from ``records``
    (records of other settings are ignored; recipe ``track`` is the track's own). The records of
    ``speedup`` must come from one section (one base checkpoint): else ValueError."""
    finals: dict[tuple[str, str], dict[int, float]] = defaultdict(dict)
    track, metric = "", ""
    secs = {section_of(r) for r in records if r.speedup.target == speedup}
    if len(secs) > 1:
        raise ValueError(f"records from {len(secs)} base checkpoints or track versions: compare them "
                         f"separately (analyse_sections)")
    for r in records:
        recipe = r.recipe or TRACK_RECIPE
        if r.status != "ok" or r.speedup.target != speedup or recipe not in recipes:
            continue
        track, metric = r.track.id, r.metric.name
        finals[(run_name(r, recipe=False), recipe)][r.seed] = r.metric.final
    report = SwapReport(track=track, speedup=speedup, metric=metric, methods=list(methods), recipes=list(recipes),
                        own=dict(own or {}), section=next(iter(secs), None))
    for m, rec in itertools.product(methods, recipes):
        xs = finals.get((m, rec))
        if xs:
            report.cells[(m, rec)] = stats.summarize(xs.values())
        else:
            report.missing.append((m, rec))
    if not report.complete:
        return report
    mean = {k: c.mean for k, c in report.cells.items()}
    tests = {rec: stats.rank({m: finals[(m, rec)] for m in methods}) for rec in recipes}
    for rec in recipes:
        report.rankings[rec] = sorted(methods, key=lambda m: (-mean[(m, rec)], m))
        report.tie_ranks[rec] = tests[rec].ranks
    for r1, r2 in itertools.combinations(recipes, 2):
        report.kendall[(r1, r2)] = kendall_tau([mean[(m, r1)] for m in methods], [mean[(m, r2)] for m in methods])
    for a, b in itertools.combinations(methods, 2):
        winners = {rec: _winner(mean[(a, rec)], mean[(b, rec)], a, b) for rec in recipes}
        pair = Pair(a, b, winners, holds=len(set(winners.values())) == 1 and None not in winners.values(),
                    within_noise={rec for rec in recipes if not tests[rec].differs(a, b)})
        if a in report.own and b in report.own:
            pair.published = _winner(mean[(a, report.own[a])], mean[(b, report.own[b])], a, b) or "tie"
        report.pairs.append(pair)
    return report


def markdown(report: SwapReport) -> str:
    rs = report.recipes
    base = f", base {report.section.base_sha256[:12]}" if report.section and report.section.base_sha256 else ""
    lines = [f"### Recipe swap: {report.track} at {report.speedup:g}x ({report.metric}, mean ± 95% CI over "
             f"seeds{base})", "",
             "| Method | " + " | ".join(f"retrain {r}" for r in rs) + " |", "|---|" + "---|" * len(rs)]
    for m in report.methods:
        row = []
        for rec in rs:
            c = report.cells.get((m, rec))
            rank = report.tie_ranks.get(rec, {}).get(m)
            row.append("missing" if c is None else f"{stats.fmt(c)} (n={c.n}"
                       + (f", rank {rank})" if rank else ")"))
        lines.append(f"| {m} | " + " | ".join(row) + " |")
    lines.append("")
    if not report.complete:
        lines.append("No verdict: missing runs for " + ", ".join(f"{m} with {r}" for m, r in report.missing) + ".")
        return "\n".join(lines) + "\n"
    if report.pairs:
        head = ["A", "B", *(f"winner under {r}" for r in rs)]
        if report.own:
            head.append("as published (A+own vs B+own)")
        lines += ["| " + " | ".join(head) + " | holds |", "|" + "---|" * (len(head) + 1)]
        for p in report.pairs:
            cells = [p.a, p.b, *((p.winners[r] or "tie") + ("*" if r in p.within_noise and p.winners[r] else "")
                                 for r in rs)]
            if report.own:
                cells.append(p.published or "n/a")
            lines.append("| " + " | ".join(cells) + f" | {'yes' if p.holds else 'no'} |")
        if any(p.within_noise for p in report.pairs):
            lines.append("\n\\* within noise: not significantly different at the 5% level (paired t-test by seed, "
                         "else Welch; Holm over the pairs under that recipe), or fewer than two seeds")
        lines.append("")
    for (r1, r2), tau in report.kendall.items():
        lines.append(f"Kendall's tau between the rankings under {r1} and {r2}: {tau:+.2f}")
    flipped = [p for p in report.pairs if not p.holds]
    if report.holds:
        lines.append(f"Verdict: the ranking holds under every recipe ({', '.join(rs)}).")
    else:
        lines.append("Verdict: the ranking does NOT hold: " + "; ".join(
            f"{p.a} vs {p.b}: " + ", ".join(f"{p.winners[r] or 'tie'} under {r}" for r in rs) for p in flipped) + ".")
    misleading = report.misleading()
    if misleading:
        lines.append("As published (each method retrained with its own recipe), these comparisons disagree with a "
                     "same-recipe comparison: " + ", ".join(f"{p.a} vs {p.b}" for p in misleading) + ".")
    return "\n".join(lines) + "\n"
