"""Full digits leaderboard wall time: every method, plus PruningBench's regularizer pairings, at
2x/4x/8x on the embedded digits track, with the track's seeds 0, 1, 2 (153 runs), through the
default subprocess runner. Target: <= 30 minutes on 2 CPU cores (base-model pretraining excluded:
it is cached once).

    python benchmarks/digits_leaderboard.py [--out DIR] [--jobs 1] [--seeds 0,1,2]

With ``--out benchmarks/results`` (what ``make digits-leaderboard`` does) the records feed the
README's digits table; by default they go to a fresh temporary folder, so every run is timed.
Prints the wall time, its ratio to the target, where the time went (medians per run), and the
measured latency speedup beside the MACs speedup per target.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from harness.methods import find_method, providing
from harness.protocol.run import RunSpec
from harness.orchestration.sweep import run_sweep
from harness.tasks import task_for
from harness.tracks import load_track

TARGET_S = 1800.0
#: PruningBench's leaderboards pair these importance criteria with the regularizers
PAIRINGS = {"magnitude_l2": ["group_lasso", "group_norm", "growing_reg"], "bn_scale": ["bn_scale_l1", "group_lasso"]}


def specs(out: Path, seeds: list[int] | None = None) -> list[RunSpec]:
    track = load_track("digits-resnet18")
    combos = [(m.id, None) for m in providing("importance")] + [(m, r) for m, regs in PAIRINGS.items() for r in regs]
    return [RunSpec(track=track, method=find_method(m), regularizer=find_method(r) if r else None, speedup=s,
                    seed=seed, out=out, save_models=False)
            for m, r in combos for s in track.pruning.speedups for seed in (seeds or track.seeds)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--seeds", default=None, help="comma-separated (default: the track's)")
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="pbench-digits-"))
    todo = specs(out, [int(x) for x in args.seeds.split(",")] if args.seeds else None)
    t0 = time.perf_counter()
    task_for(todo[0].track).base_model()  # cached after the first time
    pretrain_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    summary = run_sweep(todo, out, jobs=args.jobs)
    wall = time.perf_counter() - t0
    ran = [r for r in summary.records if r.status == "ok"]
    print(f"digits leaderboard: {len(todo)} runs ({summary.ran} ran, {summary.skipped} already recorded, "
          f"{summary.failed} failed) in {wall:.0f} s with --jobs {args.jobs}; base model {pretrain_s:.0f} s "
          f"(cached after the first time) -> {out}")
    print(f"wall time / {TARGET_S / 60:.0f}-minute target: {wall / TARGET_S:.2f}x "
          f"({'met' if wall <= TARGET_S else 'NOT met'})")
    if ran:
        med = lambda xs: statistics.median([x for x in xs if x is not None] or [0.0])  # noqa: E731
        print("median per run (s): total {:.1f}, pruning step {:.2f}, retrain {:.1f}, sparsify (regularizer runs) "
              "{:.1f}".format(med([r.timing.total_s for r in ran]), med([r.timing.step_s for r in ran]),
                              med([r.timing.retrain_s for r in ran]), med([r.timing.reg_s for r in ran])))
        print("\n| target | MACs speedup (median) | latency speedup batch 1 (median) | throughput speedup "
              "(median) | runs |\n|---|---|---|---|---|")
        for target in sorted({r.speedup.target for r in ran}):
            rs = [r for r in ran if r.speedup.target == target and r.latency]
            print(f"| {target:g}x | {med([r.speedup.achieved for r in rs]):.2f}x | "
                  f"{med([r.latency.speedup_batch1 for r in rs]):.2f}x | "
                  f"{med([r.latency.speedup_throughput for r in rs]):.2f}x | {len(rs)} |")


if __name__ == "__main__":
    main()
