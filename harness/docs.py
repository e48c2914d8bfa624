"""Generated parts of README.md (tables from the registries), between marker comments.

    python -m harness.docs          # rewrite README.md
    python -m harness.docs --check  # exit 1 when README.md is stale (a test runs this)
"""

from __future__ import annotations

import argparse
import re
import sys
from typing import Callable

from harness.methods import REPO_ROOT

README = REPO_ROOT / "README.md"


def md_table(columns: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _methods() -> str:
    from harness.cli.listing import METHOD_COLUMNS, methods_table
    return md_table(METHOD_COLUMNS, methods_table())


def _tracks() -> str:
    from harness.cli.listing import TRACK_COLUMNS, tracks_table
    return md_table(TRACK_COLUMNS, tracks_table())


def _cli() -> str:
    from typer.main import get_command
    from harness.cli import app
    group = get_command(app)
    rows = [[f"`pbench-harness {name}`", (cmd.help or "").strip().splitlines()[0]]
            for name, cmd in group.commands.items()]
    return md_table(["command", "what it does"], rows)


#: result records of the digits leaderboard (committed; produced by `make digits-leaderboard`)
DIGITS_RESULTS = REPO_ROOT / "benchmarks" / "results" / "digits-resnet18"
#: the digits table's columns (of harness.views.leaderboard.COLUMNS)
DIGITS_COLUMNS = ["Speedup", "Rank", "Importance", "Regularizer", "n", "Pruned", "Pruned+BN", "Final", "Δ", "Params",
                  "Achieved", "Latency", "Step (s)", "Reg (s)"]


def _digits() -> str:
    """The whole digits-leaderboard section: every figure in it comes from the committed records."""
    import math
    import statistics

    from harness.store import Store
    from harness.views import leaderboard as lb
    from harness.views import stats
    store = Store.load(DIGITS_RESULTS) if DIGITS_RESULTS.is_dir() else Store()
    if store.invalid:
        raise ValueError(f"invalid records in {DIGITS_RESULTS}: {store.invalid[0]}")
    if not store.records:
        return "(no results yet: run `make digits-leaderboard`)"
    records = list(store.records.values())
    rows = lb.rows(records)
    by_section = lb.sections(rows)
    if len(by_section) != 1:
        raise ValueError(f"{DIGITS_RESULTS}: records from {len(by_section)} base checkpoints or track versions; "
                         f"regenerate them all with `make digits-leaderboard`")
    [section] = by_section
    ok = [r for r in records if r.status == "ok"]
    seeds = sorted({r.seed for r in records})
    targets = sorted({r.speedup.target for r in records})
    combos = sorted({lb.run_name(r) for r in records})
    run_s = math.fsum(r.timing.total_s for r in records if r.timing and r.timing.total_s)  # not a span: records
    # of one track may come from several sweeps (a sweep skips what is recorded)
    med = statistics.median
    n = len(records) // max(1, len(targets))
    base_metric = statistics.fmean(r.metric.base for r in ok)
    batch = next((r.latency.throughput_batch for r in ok if r.latency), 0)
    from harness.tracks import load_track
    pin = load_track(section.track).checkpoint.sha256
    pinned = "the track pins it" if pin == section.base_sha256 else \
        f"the track pins `{lb.short(pin)}…`: run `make digits-leaderboard`"
    threads = "/".join(str(t) for t in sorted({r.provenance.torch_threads for r in ok if r.provenance.torch_threads}))

    def per_target(f) -> str:
        return " / ".join(f(target) for target in targets)

    def of(target):
        return [r for r in ok if r.speedup.target == target and r.latency]

    intro = (
        f"Every importance method and PruningBench's regularizer pairings on the embedded `digits-resnet18` track: "
        f"{len(records)} runs ({len(combos)} combinations x {'/'.join(f'{t:g}x' for t in targets)} x seeds "
        f"{', '.join(map(str, seeds))}; {len(records) - len(ok)} failed) on the CPU, all from one base checkpoint "
        f"(sha256 `{lb.short(section.base_sha256)}…`, top-1 {base_metric:.2f}; {pinned}). "
        f"`make digits-leaderboard` reproduces them ({run_s:.0f} s of run time summed over the runs, "
        f"on 2 cores, {threads} torch thread(s) per run, base pretraining excluded; `--jobs 2` runs two at a time); "
        f"every figure in this section is generated from the records in "
        f"`benchmarks/results/digits-resnet18/` by `python -m harness.docs`. Latency is the measured batch-1 "
        f"inference speedup (median of repeats after warm-up). Medians over the {n} runs per target: MACs "
        + per_target(lambda t: f"{med([r.speedup.achieved for r in of(t)]):.2f}x") + " gave batch-1 latency "
        + per_target(lambda t: f"{med([r.latency.speedup_batch1 for r in of(t)]):.2f}x")
        + f" and batch-{batch} throughput "
        + per_target(lambda t: f"{med([r.latency.speedup_throughput for r in of(t)]):.2f}x")
        + " — on a model with 8x8 inputs, time is dominated by per-layer overhead, so MACs speedup overstates the "
          "real one. Latency and step/reg times are wall-clock on a shared machine and only indicative.")

    idx = [lb.COLUMNS.index(c) for c in DIGITS_COLUMNS]
    table = md_table(DIGITS_COLUMNS, [[lb.cells(r)[i] for i in idx] for r in rows])
    average = md_table(["Importance", "Regularizer", "Mean rank", "Speedups ranked"],
                       [lb.average_cells(a)[1:] for a in lb.average(rows)])

    at = {t: [r for r in rows if r.speedup == t and r.final.n] for t in targets}
    def versus(metric: str, family: str) -> dict:
        return {s[1]: names for s, names in lb.differs_from(rows, "random", metric, family).items()}

    vs_final, vs_final1 = versus("final", "all"), versus("final", "reference")
    vs_recal, vs_recal1 = versus("pruned_recal", "all"), versus("pruned_recal", "reference")
    raw_final, raw_recal = versus("final", "none"), versus("pruned_recal", "none")
    chance = f"{0.05 * (len(combos) - 1):.1f}"
    others = len(combos) - 1

    def spread(t, attr) -> str:
        means = [getattr(r, attr).mean for r in at[t] if getattr(r, attr).n]
        return f"{min(means):.1f}–{max(means):.1f}" if means else "n/a"

    def half(t, attr) -> str:
        widths = [getattr(r, attr).half_width for r in at[t] if getattr(r, attr).half_width is not None]
        return f"±{med(widths):.2f}" if widths else "n/a"

    def corr(t, f) -> str:
        pairs = [(r.pruned_recal.mean, r.final.mean) for r in at[t] if r.pruned_recal.n and r.final.n]
        value = f([a for a, _ in pairs], [b for _, b in pairs]) if len(pairs) > 1 else None
        return "n/a" if value is None else f"{value:+.2f}"

    def names(d, t) -> str:
        if t not in d:
            return "n/a"
        return f"{len(d[t])}" + (f" ({', '.join(d[t])})" if d[t] else "")

    def median_of(t, attr) -> str:
        means = [getattr(r, attr).mean for r in at[t] if getattr(r, attr).n]
        return f"{med(means):.1f}" if means else "n/a"

    finals = sorted({round(r.metric.final, 6) for r in ok})
    test_image = min((b - a for a, b in zip(finals, finals[1:])), default=0.0)  # the metric's resolution
    findings = "\n".join([
        "**What this track can tell, and what it cannot.** At " + ", ".join(f"{t:g}x" for t in targets) + ":",
        "",
        "- *Final* (after retraining): the cells' means span " + per_target(lambda t: spread(t, "final"))
        + " top-1 and a cell's 95% CI is " + per_target(lambda t: half(t, "final"))
        + f" (median; one test image is {test_image:.2f} points). Of the {others} other rows, "
        + per_target(lambda t: names(vs_final, t)) + " differ significantly from Random (5%, Holm over all pairs "
          "of a cell, as the ranks), " + per_target(lambda t: names(vs_final1, t)) + " when only the comparisons "
          "with Random form the family (unadjusted p < 0.05: " + per_target(lambda t: names(raw_final, t))
        + f", where {chance} would pass by chance); the distinct ranks are "
        + per_target(lambda t: str(len({r.rank for r in at[t]})))
        + (". No test separates any two methods: this track does not tell which criterion retrains best."
           if all(len({r.rank for r in at[t]}) == 1 for t in targets) else
           ". Where a cell's interval is wider than the gaps between methods, their ranks are ties."),
        "- *Pruned* (before retraining, with the BatchNorm statistics of the unpruned model): the cells' means span "
        + per_target(lambda t: spread(t, "pruned")) + ", median " + per_target(lambda t: median_of(t, "pruned"))
        + " (chance: 10).",
        "- *Pruned+BN* (the same models with BatchNorm statistics re-estimated on the calibration images): "
        + per_target(lambda t: spread(t, "pruned_recal")) + ", median " + per_target(
            lambda t: median_of(t, "pruned_recal")) + ", CI " + per_target(lambda t: half(t, "pruned_recal"))
        + "; " + per_target(lambda t: names(vs_recal, t)) + " rows differ significantly from Random (all pairs), "
        + per_target(lambda t: names(vs_recal1, t)) + " (the comparisons with Random only; unadjusted: "
        + per_target(lambda t: names(raw_recal, t)) + "). It measures "
          "what a criterion keeps before any retraining; its agreement with Final over the cells is Spearman's ρ "
        + per_target(lambda t: corr(t, stats.spearman)) + ", Kendall's τ "
        + per_target(lambda t: corr(t, stats.kendall_tau)) + ".",
        "- The track checks that every method runs end to end under the protocol, with measured speedups and step "
        "times, in minutes on a CPU; rankings that transfer to CIFAR or ImageNet need the PruningBench tracks on "
        "GPUs.",
    ])
    return "\n\n".join([intro, table, lb.LEGEND + (" " + lb.FLAG_LEGEND if any(r.constant_scores for r in rows)
                                                    else ""),
                          "Average over speedups (PruningBench's view: the mean rank over " + ", ".join(
                              f"{t:g}x" for t in targets) + "):", average, findings])


SECTIONS: dict[str, Callable[[], str]] = {"methods": _methods, "tracks": _tracks, "cli": _cli, "digits": _digits}


def render(text: str) -> str:
    for name, make in SECTIONS.items():
        pattern = re.compile(rf"(<!-- BEGIN {name} -->\n).*?(<!-- END {name} -->)", re.S)
        if not pattern.search(text):
            raise ValueError(f"README.md has no '<!-- BEGIN {name} -->' ... '<!-- END {name} -->' block")
        text = pattern.sub(lambda m: m.group(1) + make() + "\n" + m.group(2), text)
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness.docs")
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args(argv)
    current = README.read_text()
    fresh = render(current)
    if args.check:
        if fresh != current:
            print("README.md is stale: run `python -m harness.docs`", file=sys.stderr)
            return 1
        return 0
    README.write_text(fresh)
    return 0


if __name__ == "__main__":
    sys.exit(main())
