"""Latency as the views show it: per runtime (eager PyTorch, ONNX Runtime, TensorRT), with its interval.

A cell shows its **median run** (of the ok runs that measured the runtime; the lower middle one of an
even count): that run's speedup with that run's own 95% interval, never a mean of interval ends. It is
*uncertain* (shown with ``?``) when any of its runs' intervals is wider than +-10%
(:data:`specs.result.UNCERTAIN_HALF_WIDTH`). Records before spec 1.4 (wall clock, median of 15 passes, no
interval, no runtimes) are never pooled with 1.4 ones: a cell with any 1.4 measurement uses only those,
else it shows the older runs' median, always uncertain (they carry no interval).
"""

from __future__ import annotations

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
    #: the median run's pruned model at batch 1 (ms on its clock) and that clock (None before spec 1.4: wall)
    ms: Optional[float] = None
    clock: Optional[str] = None
    #: the cell shows records before spec 1.4 (no 1.4 measurement in it)
    older: bool = False

    def text(self) -> str:
        """``2.02x [1.98-2.10]``, ``?`` appended when uncertain; no interval for records before 1.4."""
        ci = f" [{self.low:.2f}-{self.high:.2f}]" if self.low is not None else ""
        return f"{self.speedup:.2f}x{ci}" + (f" {UNCERTAIN_MARK}" if self.uncertain else "")

    def as_dict(self) -> dict:
        return {"runtime": self.runtime, "speedup": self.speedup, "ci95": [self.low, self.high]
                if self.low is not None else None, "uncertain": self.uncertain, "n": self.n, "ms": self.ms,
                "clock": self.clock, "older": self.older}


def _point(r: ResultRecord, runtime: str):
    """``(speedup, interval, uncertain, pruned ms, clock)`` of one record in ``runtime``, or None when it has none."""
    lat = r.latency
    if lat is None:
        return None
    if runtime == EAGER:
        return lat.speedup_batch1, lat.speedup_batch1_ci, lat.uncertain, lat.batch1_pruned_ms, lat.clock
    rt = lat.runtimes.get(runtime)
    if rt is None or rt.status != "measured" or rt.speedup_batch1 is None:
        return None
    return rt.speedup_batch1, rt.speedup_batch1_ci, rt.uncertain, rt.batch1_pruned_ms, rt.clock


def latency_cell(records: list[ResultRecord], runtime: str = EAGER) -> Optional[LatencyCell]:
    """The batch-1 speedup of the ok ``records`` in ``runtime`` (see the module docstring); None if none."""
    points = [p for r in records if r.status == "ok" and (p := _point(r, runtime)) is not None]
    new = [p for p in points if p[1] is not None]
    older = not new
    points = sorted(points if older else new, key=lambda p: p[0])
    if not points:
        return None
    speedup, ci, _, ms, clock = points[(len(points) - 1) // 2]
    return LatencyCell(runtime, speedup, ci[0] if ci else None, ci[1] if ci else None,
                       older or any(p[2] for p in points), len(points), ms, clock, older)


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


LEGEND = (f"Latency: batch-1 speedup measured on the evaluation device (on the CPU: the timing thread's CPU time), "
          f"the median run's figure with that run's own 95% interval (Hodges-Lehmann over paired timing blocks); "
          f"{UNCERTAIN_MARK} = some run's interval is wider than +-10%, or the runs predate spec 1.4 (wall clock, "
          f"no interval; never pooled with newer ones). {LABELS['onnxruntime']}: the same in ONNX Runtime on the CPU.")
