"""Latency as the views show it: per runtime (eager PyTorch, ONNX Runtime, TensorRT), with its interval.

A cell's figure is the mean speedup of its ok runs that measured the runtime, its interval the mean of
their 95% intervals' ends (one run: its own interval), and it is *uncertain* (shown with ``?``) when any
run's interval is wider than +-10% (:data:`specs.result.UNCERTAIN_HALF_WIDTH`). Records before spec 1.4
have an eager speedup without an interval, and no runtimes.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Optional

from specs.result import ResultRecord

EAGER = "eager"
#: the deployment runtime the Pareto plot uses where it was measured
DEPLOYMENT = "onnxruntime"
#: short column names
LABELS = {EAGER: "PyTorch", "onnxruntime": "ONNX RT", "tensorrt": "TensorRT"}
UNCERTAIN_MARK = "?"


@dataclass
class LatencyCell:
    runtime: str
    speedup: float
    low: Optional[float]
    high: Optional[float]
    uncertain: bool
    n: int

    def text(self) -> str:
        """``2.02x [1.98-2.10]``, ``?`` appended when uncertain; no interval for records before 1.4."""
        ci = f" [{self.low:.2f}-{self.high:.2f}]" if self.low is not None else ""
        return f"{self.speedup:.2f}x{ci}" + (f" {UNCERTAIN_MARK}" if self.uncertain else "")

    def as_dict(self) -> dict:
        return {"runtime": self.runtime, "speedup": self.speedup, "ci95": [self.low, self.high]
                if self.low is not None else None, "uncertain": self.uncertain, "n": self.n}


def _point(r: ResultRecord, runtime: str):
    """``(speedup, interval, uncertain)`` of one record in ``runtime``, or None when it has none."""
    lat = r.latency
    if lat is None:
        return None
    if runtime == EAGER:
        return lat.speedup_batch1, lat.speedup_batch1_ci, lat.uncertain
    rt = lat.runtimes.get(runtime)
    if rt is None or rt.status != "measured" or rt.speedup_batch1 is None:
        return None
    return rt.speedup_batch1, rt.speedup_batch1_ci, rt.uncertain


def latency_cell(records: list[ResultRecord], runtime: str = EAGER) -> Optional[LatencyCell]:
    """The batch-1 speedup of the ok ``records`` in ``runtime`` (see the module docstring); None if none."""
    points = [p for r in records if r.status == "ok" and (p := _point(r, runtime)) is not None]
    if not points:
        return None
    cis = [ci for _, ci, _ in points if ci is not None]
    return LatencyCell(runtime, statistics.fmean(s for s, _, _ in points),
                       statistics.fmean(c[0] for c in cis) if cis else None,
                       statistics.fmean(c[1] for c in cis) if cis else None,
                       any(u for _, _, u in points), len(points))


def runtimes_of(records: list[ResultRecord]) -> list[str]:
    """``eager`` and every runtime some ok record measured, in a fixed order."""
    seen = {name for r in records if r.status == "ok" and r.latency
            for name, rt in r.latency.runtimes.items() if rt.status == "measured"}
    return [EAGER] + sorted(seen)


def unmeasured(records: list[ResultRecord]) -> dict[str, str]:
    """Runtime -> why it was not measured (the first reason found), for legends."""
    out: dict[str, str] = {}
    for r in records:
        for name, rt in (r.latency.runtimes.items() if r.latency else ()):
            if rt.status != "measured" and rt.reason:
                out.setdefault(name, f"{rt.status}: {rt.reason}")
    return out


def pareto_runtime(records: list[ResultRecord]) -> str:
    """The runtime a Pareto plot of ``records`` uses by default: the deployment runtime where it was measured."""
    return DEPLOYMENT if DEPLOYMENT in runtimes_of(records) else EAGER


def text(cell: Optional[LatencyCell]) -> str:
    return "n/a" if cell is None else cell.text()


LEGEND = (f"Latency: batch-1 speedup measured on the evaluation device, mean over runs, with its 95% interval "
          f"(Hodges-Lehmann over paired timing blocks); {UNCERTAIN_MARK} = an interval wider than +-10%. "
          f"{LABELS['onnxruntime']}: the same in ONNX Runtime on the CPU.")
