"""Leaderboards, computed only from result records.

One row per (track, speedup, strategy, retraining recipe, method, regularizer):
mean and standard deviation over seeds; ranks are per (track, speedup, strategy,
recipe) on the mean final metric. Failed runs are counted and shown, never
silently dropped. The recipe is the track's own unless a recipe-swap run chose
another (shown beside the strategy).
"""

from __future__ import annotations

import csv
import io
import statistics
from collections import defaultdict
from dataclasses import dataclass
from typing import Optional

from specs.result import ResultRecord


@dataclass
class Row:
    track: str
    speedup: float
    strategy: str
    method: str
    regularizer: str
    n_ok: int
    n_failed: int
    base: Optional[float]
    pruned: Optional[float]
    final: Optional[float]
    final_std: Optional[float]
    delta: Optional[float]
    achieved: Optional[float]
    params_ratio: Optional[float]
    step_s: Optional[float]
    reg_s: Optional[float]
    latency_speedup: Optional[float] = None  # measured, batch 1
    recipe: Optional[str] = None  # recipe-swap runs: the track recipe used for retraining
    rank: Optional[int] = None
    error: str = ""


def run_name(r: ResultRecord, recipe: bool = True) -> str:
    """``method[+regularizer]``, and `` (retrain <recipe>)`` for a recipe-swap run."""
    return (r.method.id + (f"+{r.regularizer.id}" if r.regularizer else "")
            + (f" (retrain {r.recipe})" if recipe and r.recipe else ""))


def _mean(xs: list) -> Optional[float]:
    xs = [x for x in xs if x is not None]
    return statistics.fmean(xs) if xs else None


def _std(xs: list) -> Optional[float]:
    xs = [x for x in xs if x is not None]
    return statistics.stdev(xs) if len(xs) > 1 else (0.0 if xs else None)


def rows(records: list[ResultRecord]) -> list[Row]:
    cells: dict[tuple, list[ResultRecord]] = defaultdict(list)
    for r in records:
        reg = r.regularizer.id if r.regularizer else "-"
        cells[(r.track.id, r.speedup.target, r.strategy, r.recipe, r.method.id, reg)].append(r)
    out = []
    for (track, speedup, strategy, recipe, method, reg), rs in cells.items():
        ok = [r for r in rs if r.status == "ok"]
        failed = [r for r in rs if r.status != "ok"]  # failed or cancelled
        out.append(Row(
            track=track, speedup=speedup, strategy=strategy, recipe=recipe, method=method, regularizer=reg,
            n_ok=len(ok), n_failed=len(failed),
            base=_mean([r.metric.base for r in rs]), pruned=_mean([r.metric.pruned for r in ok]),
            final=_mean([r.metric.final for r in ok]), final_std=_std([r.metric.final for r in ok]),
            delta=_mean([r.metric.delta for r in ok]), achieved=_mean([r.speedup.achieved for r in ok]),
            params_ratio=_mean([r.params.pruned / r.params.base for r in ok if r.params.base]),
            step_s=_mean([r.timing.step_s for r in ok]), reg_s=_mean([r.timing.reg_s for r in ok]),
            latency_speedup=_mean([r.latency.speedup_batch1 for r in ok if r.latency]),
            error=failed[0].error if failed and not ok else ""))
    by_setting: dict[tuple, list[Row]] = defaultdict(list)
    for row in out:
        by_setting[(row.track, row.speedup, row.strategy, row.recipe)].append(row)
    for setting in by_setting.values():
        ranked = sorted((r for r in setting if r.final is not None), key=lambda r: -r.final)
        for i, r in enumerate(ranked, 1):
            r.rank = i
    return sorted(out, key=lambda r: (r.track, r.strategy, r.recipe or "", r.speedup, r.rank or 10**9, r.method,
                                      r.regularizer))


def _f(x: Optional[float], fmt: str = ".2f") -> str:
    return "n/a" if x is None else format(x, fmt)


COLUMNS = ["Track", "Speedup", "Strategy", "Rank", "Importance", "Regularizer", "Base", "Pruned", "Final",
           "Δ", "Params", "Achieved", "Latency", "Step (s)", "Reg (s)", "Seeds"]


def cells(r: Row) -> list[str]:
    final = "failed" if r.final is None else f"{r.final:.2f} ± {r.final_std:.2f}"
    seeds = f"{r.n_ok}" + (f" (+{r.n_failed} failed)" if r.n_failed else "")
    params = "n/a" if r.params_ratio is None else f"{100 * r.params_ratio:.1f}%"
    achieved = "n/a" if r.achieved is None else f"{r.achieved:.2f}x"
    latency = "n/a" if r.latency_speedup is None else f"{r.latency_speedup:.2f}x"
    strategy = r.strategy + (f" · retrain {r.recipe}" if r.recipe else "")
    return [r.track, f"{r.speedup:g}x", strategy, str(r.rank or "-"), r.method, r.regularizer, _f(r.base),
            _f(r.pruned), final, _f(r.delta, "+.2f"), params, achieved, latency, _f(r.step_s, ".3f"),
            _f(r.reg_s, ".1f"), seeds]


def markdown(rs: list[Row]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(cells(r)) + " |" for r in rs]
    return "\n".join(lines) + "\n"


def to_csv(rs: list[Row]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["track", "speedup", "strategy", "recipe", "rank", "importance", "regularizer", "base", "pruned", "final",
                "final_std", "delta", "params_ratio", "achieved_speedup", "latency_speedup_b1", "step_s", "reg_s",
                "n_ok", "n_failed", "error"])
    for r in rs:
        w.writerow([r.track, r.speedup, r.strategy, r.recipe or "", r.rank or "", r.method, r.regularizer, r.base, r.pruned, r.final,
                    r.final_std, r.delta, r.params_ratio, r.achieved, r.latency_speedup, r.step_s, r.reg_s, r.n_ok,
                    r.n_failed, r.error])
    return buf.getvalue()
