"""Generated parts of README.md (tables from the registries), between marker comments.

    python -m harness.docs          # rewrite README.md and docs/figures/*.svg
    python -m harness.docs --check  # exit 1 when either is stale (tests compare both)
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
    from harness.views import cd, stats
    from harness.views import leaderboard as lb
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
        f"inference speedup, a cell's figure its median run's"
        + ("; these records predate spec 1.4 (wall clock, median of repeats after warm-up, no interval), so "
           "every figure carries `?`" if not any(r.latency.speedup_batch1_ci for r in ok if r.latency) else
           " with that run's 95% interval")
        + f". Medians over the {n} runs per target: MACs "
        + per_target(lambda t: f"{med([r.speedup.achieved for r in of(t)]):.2f}x") + " gave batch-1 latency "
        + per_target(lambda t: f"{med([r.latency.speedup_batch1 for r in of(t)]):.2f}x")
        + f" and batch-{batch} throughput "
        + per_target(lambda t: f"{med([r.latency.speedup_throughput for r in of(t)]):.2f}x")
        + " — on a model with 8x8 inputs, time is dominated by per-layer overhead, so MACs speedup overstates the "
          "real one. Latency and step/reg times are wall-clock on a shared machine and only indicative.")

    idx = [lb.COLUMNS.index(c) for c in DIGITS_COLUMNS]
    table = md_table(DIGITS_COLUMNS, [[lb.cells(r)[i] for i in idx] for r in rows])

    final, recal = lb.analysis(rows, "final"), lb.analysis(rows, "pruned_recal")
    control = lb.control_of(section.track)
    versus = {m: lb.control_cells(rows, m) for m in lb.ANALYSED}
    power = {m: lb.power_cells(rows, m) for m in lb.ANALYSED}
    avg = lb.average(rows)
    average = md_table(
        ["Importance", "Regularizer", "Mean rank (Final)", "Ahead of (Final)", "Mean rank (Pruned+BN)",
         "Ahead of (Pruned+BN)"] + [f"Final vs {control} {t:g}x" for t in targets],
        [[a.method + (f" {lb.FLAG}" if a.constant_scores else ""), a.regularizer,
          "left out" if a.mean_rank is None else f"{a.mean_rank:.2f}", ", ".join(a.better_than) or "-",
          f"{recal.mean_ranks[a.name]:.2f}" if a.name in recal.mean_ranks else "left out",
          (", ".join(recal.better_than(a.name)) or "-") if a.name in recal.mean_ranks else "-"]
         + lb.average_cells(a, targets)[5:] for a in avg])

    at = {t: [r for r in rows if r.speedup == t and r.final.n] for t in targets}
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

    def median_of(t, attr) -> str:
        means = [getattr(r, attr).mean for r in at[t] if getattr(r, attr).n]
        return f"{med(means):.1f}" if means else "n/a"

    def passing(metric, t) -> str:
        tests = versus[metric].get(t, [])
        sig = [x.name for x in tests if x.significant]
        return f"{len(sig)}" + (f" ({', '.join(sig)})" if sig else "")

    def smallest(metric, t) -> str:
        tests = versus[metric].get(t, [])
        if not tests:
            return "n/a"
        best = min(tests, key=lambda x: x.p)
        return f"{best.p:.3f} ({best.name}, {best.diff:+.2f}; Holm {best.p_adjusted:.2f})"

    def span(t, attr) -> float:
        means = [getattr(r, attr).mean for r in at[t] if getattr(r, attr).n]
        return max(means) - min(means) if means else 0.0

    def control_ci(t) -> str:
        mine = [r for r in at[t] if r.name == control]
        return stats.fmt(mine[0].pruned_recal) if mine else "n/a"

    def mdd(metric, t) -> str:
        p = power[metric].get(t)
        return "n/a" if p is None or p.mdd is None else f"{p.mdd:.1f}"

    def need(metric, t, difference=1.0) -> str:
        p = power[metric].get(t)
        return "n/a" if p is None or p.sd is None else cd.fmt_seeds(cd.seeds_needed(p.sd, difference, p.comparisons))

    def separation(a) -> str:
        if a.friedman_p is None:
            return "too few methods or blocks for Friedman's test"
        head = (f"Friedman χ² = {a.friedman_statistic:.1f}, p = {cd.fmt_p(a.friedman_p)} over {a.n_blocks} blocks; "
                f"critical difference {a.critical_difference:.2f} ranks")
        pairs = a.separated()
        if not a.rejects or not pairs:
            return head + ": no pair is separated"
        leaders = list(dict.fromkeys(x for x, _ in pairs))
        return head + ": " + "; ".join(
            f"{x} ({a.mean_ranks[x]:.2f}) is ahead of {len(a.better_than(x))} "
            f"({', '.join(f'{y} {a.mean_ranks[y]:.2f}' for y in a.better_than(x))})" for x in leaders)

    m = max(p.comparisons for p in power["final"].values())
    finals = sorted({round(r.metric.final, 6) for r in ok})
    test_image = min((b - a for a, b in zip(finals, finals[1:])), default=0.0)  # the metric's resolution
    findings = "\n".join([
        "**What this track can tell, and what it cannot.** At " + ", ".join(f"{t:g}x" for t in targets) + ":",
        "",
        "- *Final* (after retraining), over all the evidence: " + separation(final) + "."
        + (" Every pair not named is closer than the critical difference: its order in the table is not a finding."
           if final.rejects and final.separated() else ""),
        "- *Final, cell by cell*: the cells' means span " + per_target(lambda t: spread(t, "final"))
        + " top-1 and a cell's 95% CI is " + per_target(lambda t: half(t, "final"))
        + f" (median; one test image is {test_image:.2f} points). Against {control} (paired t-test by seed, Holm "
          f"over the {others} comparisons), " + per_target(lambda t: passing("final", t))
        + " rows differ; the smallest p is " + per_target(lambda t: smallest("final", t)) + ". With "
        + f"{len(seeds)} seeds a cell detects (80% power, 5% / {m}) only differences of "
        + per_target(lambda t: mdd("final", t)) + " points"
        + (", larger than the whole span of the cell's means" if all(
            power["final"][t].mdd is not None and power["final"][t].mdd > span(t, "final") for t in targets) else "")
        + ": a tie in a cell means \"not measurable at this n\", not \"equal\". Detecting 1 point would need "
        + per_target(lambda t: need("final", t)) + " seeds per cell (`sweep --dry-run --target-difference 1.0`).",
        "- *Pruned* (before retraining, with the BatchNorm statistics of the unpruned model): the cells' means span "
        + per_target(lambda t: spread(t, "pruned")) + ", median " + per_target(lambda t: median_of(t, "pruned"))
        + " (chance: 10).",
        "- *Pruned+BN* (the same models with BatchNorm statistics re-estimated on the calibration images; which "
        "criterion keeps most before retraining): " + per_target(lambda t: spread(t, "pruned_recal")) + ", median "
        + per_target(lambda t: median_of(t, "pruned_recal")) + ", CI " + per_target(lambda t: half(t, "pruned_recal"))
        + ". Over all the evidence: " + separation(recal) + f". Against {control} cell by cell: "
        + per_target(lambda t: passing("pruned_recal", t)) + " rows differ; the smallest p is "
        + per_target(lambda t: smallest("pruned_recal", t)) + "; detectable differences "
        + per_target(lambda t: mdd("pruned_recal", t)) + " points"
        + (f" (beyond the metric's whole range at {', '.join(f'{t:g}x' for t in beyond)}: at this n no difference "
           f"to the control is detectable there)" if (beyond := [t for t in targets
                                                               if (power["pruned_recal"][t].mdd or 0) > 100]) else "")
        + f"; {control}'s own Pruned+BN: "
        + per_target(lambda t: control_ci(t)) + ". Its agreement with Final over the cells is Spearman's ρ "
        + per_target(lambda t: corr(t, stats.spearman)) + ", Kendall's τ "
        + per_target(lambda t: corr(t, stats.kendall_tau)) + ".",
        "- How to read the mean ranks: they pool the speedups and seeds as blocks of one population, so a method "
        "that wins at 2x and loses at 8x sits in the middle; and a mean rank depends on which other methods are "
        "ranked (Benavoli et al. 2016), so adding rows can move a pair across the critical difference; rows that "
        "pair one importance criterion with several regularizers count as separate methods, so a family of "
        "near-identical rows enters k, and the critical difference, several times. On this track the regularizers "
        "barely act: the sparsify stage is 3 epochs (69 SGD steps at lr 0.01), in which their default strength 1e-5 moves a "
        "BatchNorm scale by at most about 7e-5 (weight decay moves it about 50 times more), so bn_scale+bn_scale_l1 "
        "and bn_scale+group_lasso prune alike and score alike: such rows measure the sparsify stage's extra "
        "training more than the regularizer. The track "
        "checks that every method runs end to end under the protocol, with measured speedups and step times, in "
        "minutes on a CPU; rankings that transfer to CIFAR or ImageNet need the PruningBench tracks on GPUs.",
    ])
    figures = " ".join(f"![critical-difference diagram, {label}](docs/figures/digits-cd-{metric}.svg)"
                       for metric, label in lb.ANALYSED.items())
    return "\n\n".join([intro, table, lb.LEGEND + (" " + lb.FLAG_LEGEND if any(r.constant_scores for r in rows)
                                                    else ""),
                          "**Average view**: the critical-difference analysis (Demšar 2006) over the "
                          f"{final.n_blocks} blocks (speedup, seed), on Final and on Pruned+BN:", figures,
                          average, lb.AVERAGE_LEGEND + " " + "; ".join(lb.power_line(rows, m2) for m2 in lb.ANALYSED)
                          + ".", findings])


def _digits_rows():
    from harness.store import Store
    from harness.views import leaderboard as lb
    store = Store.load(DIGITS_RESULTS) if DIGITS_RESULTS.is_dir() else Store()
    return lb.rows(list(store.records.values())) if store.records and not store.invalid else []


#: generated figures: the digits track's critical-difference diagrams (the README shows them)
FIGURES = REPO_ROOT / "docs" / "figures"


def figures() -> dict:
    """Path -> SVG text of every generated figure."""
    from harness.views import leaderboard as lb
    from harness.views.diagram import cd_diagram
    rows = _digits_rows()
    out = {}
    for metric, label in lb.ANALYSED.items():
        a = lb.analysis(rows, metric) if rows else None
        if a is not None and a.friedman_p is not None:
            out[FIGURES / f"digits-cd-{metric}.svg"] = cd_diagram(
                {str(k): v for k, v in a.mean_ranks.items()}, a.critical_difference,
                [[str(n) for n in c] for c in a.cliques()],
                f"digits-resnet18, {label}: mean rank over {a.n_blocks} blocks (speedup, seed)") + "\n"
    return out


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
    figs = figures()
    if args.check:
        stale = [p for p, text in figs.items() if not p.exists() or p.read_text() != text]
        if fresh != current or stale:
            print(f"README.md or {', '.join(p.name for p in stale) or 'its figures'} stale: run "
                  f"`python -m harness.docs`", file=sys.stderr)
            return 1
        return 0
    README.write_text(fresh)
    for path, text in figs.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
