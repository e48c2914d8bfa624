"""Measured inference latency: MACs speedup often differs from real speedup.

Median wall time of a forward pass at batch 1 and at a throughput batch, on the
evaluation device, after warm-up; base and pruned models are timed interleaved
so that machine noise hits both alike.
"""

from __future__ import annotations

import statistics
import time

import torch
import torch.nn as nn

from specs.result import Latency


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


@torch.no_grad()
def _time(model: nn.Module, x: torch.Tensor, device: str) -> float:
    _sync(device)
    t0 = time.perf_counter()
    model(x)
    _sync(device)
    return time.perf_counter() - t0


@torch.no_grad()
def measure(base: nn.Module, pruned: nn.Module, example: torch.Tensor, throughput_batch: int = 32,
            warmup: int = 3, repeats: int = 15, device: str = "cpu") -> Latency:
    """Median forward time of ``base`` and ``pruned`` at batch 1 and ``throughput_batch``."""
    was = base.training, pruned.training
    base.eval()
    pruned.eval()
    out = {}
    try:
        for batch in (1, throughput_batch):
            x = example[:1].repeat(batch, *([1] * (example.dim() - 1))).to(device)
            for _ in range(warmup):
                _time(base, x, device)
                _time(pruned, x, device)
            tb, tp = [], []
            for _ in range(repeats):
                tb.append(_time(base, x, device))
                tp.append(_time(pruned, x, device))
            out[batch] = (statistics.median(tb), statistics.median(tp))
    finally:
        base.train(was[0])
        pruned.train(was[1])
    (b1, p1), (bt, pt) = out[1], out[throughput_batch]
    return Latency(device=device, batch1_base_ms=1e3 * b1, batch1_pruned_ms=1e3 * p1, speedup_batch1=b1 / p1,
                   throughput_batch=throughput_batch, throughput_base=throughput_batch / bt,
                   throughput_pruned=throughput_batch / pt, speedup_throughput=bt / pt, repeats=repeats)
