"""How close ``sweep --dry-run``'s projection is to the runs it projects: the projected seconds of each run
shape (all its stages) and of its retraining beside the same runs' measured ``timing.total_s`` /
``timing.retrain_s``, in one process, and their ratio (median over the repeats). The projected prune
stage includes starting the method's process, which the record's ``step_s`` leaves out (it is in
``total_s``), so prune is compared through the run's total. Target: within 2x on an idle machine. Wall-clock
ratios on a shared 2-core machine move with its load (a digits step there took ~30x its idle time under
load), which is why this is a benchmark and not a timed test.

    python benchmarks/dry_run_accuracy.py [--track digits-resnet18] [--speedups 2,4] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from harness.orchestration.estimate import estimate
from harness.plan import Plan, run_plan


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--track", default="digits-resnet18")
    parser.add_argument("--method", default="magnitude_l2")
    parser.add_argument("--speedups", default="2,4")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    speedups = [float(s) for s in args.speedups.split(",")]
    ratios: dict[tuple, list[float]] = {}
    for repeat in range(args.repeats):
        out = Path(tempfile.mkdtemp(prefix="pbench-dry-run-"))
        plan = Plan.build(track=args.track, methods=[args.method], speedups=speedups, seeds=[repeat], out=out,
                          save_models=False)
        resolved = plan.resolve()
        cost = estimate(resolved)
        summary = run_plan(resolved, log=lambda line: None)
        for shape in cost.shapes:
            projected = {st.stage: st.seconds for st in shape.stages}
            [record] = [r for r in summary.records if r.speedup.target == shape.speedup and r.status == "ok"]
            for stage, guess, actual in (("run", shape.seconds, record.timing.total_s),
                                         ("retrain", projected["retrain"], record.timing.retrain_s)):
                ratios.setdefault((shape.speedup, stage), []).append(guess / actual)
                print(f"repeat {repeat} {shape.speedup:g}x {stage}: projected {guess:.2f} s, ran {actual:.2f} s")
    print("\n| target | stage | projected / measured (median) | min | max | repeats |\n|---|---|---|---|---|---|")
    for (speedup, stage), rs in sorted(ratios.items()):
        print(f"| {speedup:g}x | {stage} | {statistics.median(rs):.2f}x | {min(rs):.2f}x | {max(rs):.2f}x | {len(rs)} |")


if __name__ == "__main__":
    main()
