"""Latency you can trust: one pruned model measured 10 times under background load, old method vs new.

The digits track's model (half-width ResNet-18, 8x8 inputs), pruned to 4x by magnitude_l2 through the
harness's planner, is timed against its base 10 times in a row while another process keeps one core
busy (on top of whatever else the machine runs):

- old: the harness's measurement before spec 1.4 (median of 15 interleaved forward passes per model
  after 3 warm-up passes, torch's default thread count), reproduced here in a few lines;
- new: :func:`harness.protocol.latency.measure` (time-budgeted paired blocks, one thread,
  Hodges-Lehmann speedup with its 95% interval), eager PyTorch and ONNX Runtime.

Spread = the largest |ratio / median - 1| of the 10 batch-1 speedups. Goal: the new method's stay within
+-10% of their median.

    PYTHONPATH=. python benchmarks/latency_stability.py [--repeats 10] [--no-load]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import statistics
import time

import torch
import torch.nn as nn

from harness.models import classifier_of, create_model, prune_config_of
from harness.protocol.grouping import PruneConfig, count_macs_params, describe_groups
from harness.protocol.latency import measure
from harness.protocol.pruning import make_planner, search_speedup


def _busy(stop) -> None:
    x = 0
    while not stop.is_set():
        for _ in range(100_000):
            x += 1


def config(model: nn.Module) -> PruneConfig:
    return prune_config_of(model).merged(PruneConfig(ignored_layers=[classifier_of(model)]))


def magnitude_l2(groups, model) -> dict[str, torch.Tensor]:
    from harness.methods import find_method
    from harness.protocol.observations import collect
    from harness.runners import client_class
    with client_class("inprocess")(find_method("magnitude_l2"), {}, 0, "cpu") as client:
        return client.score(0, groups, collect(["weights"], model, groups, []))


def pruned_pair(name: str, target: float, size: int, in_chans: int = 3, round_to: int = 1, **kwargs):
    """``(base, pruned, example, macs speedup)``: ``name`` pruned to ``target`` by magnitude_l2."""
    torch.manual_seed(0)
    model = create_model(name, num_classes=10, in_chans=in_chans, image_size=size, **kwargs).eval()
    example = torch.rand(1, in_chans, size, size)
    groups = describe_groups(model, example, config(model))
    macs, _ = count_macs_params(model, example)
    planner = make_planner(groups, magnitude_l2(groups, model), {g.id: g.n_channels for g in groups},
                           "protected_global", 0.1, seed=0, round_to=round_to)
    found = search_speedup(model, example, config, planner, macs, macs, target)
    return model, found.model.eval(), example, macs / found.macs


@torch.no_grad()
def old_measure(base: nn.Module, pruned: nn.Module, example: torch.Tensor, warmup: int = 3, repeats: int = 15):
    """The batch-1 speedup as harness/protocol/latency.py measured it before spec 1.4."""
    def timed(m):
        t0 = time.perf_counter()
        m(example)
        return time.perf_counter() - t0
    for _ in range(warmup):
        timed(base), timed(pruned)
    tb, tp = [], []
    for _ in range(repeats):
        tb.append(timed(base))
        tp.append(timed(pruned))
    return statistics.median(tb) / statistics.median(tp)


def spread(xs: list[float]) -> float:
    med = statistics.median(xs)
    return max(abs(x / med - 1) for x in xs)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--no-load", action="store_true", help="no extra busy process")
    args = ap.parse_args()
    base, pruned, example, macs = pruned_pair("resnet18", 4.0, 8, in_chans=1, width=0.5)
    print(f"digits ResNet-18 (width 0.5, 8x8), magnitude_l2 to {macs:.2f}x MACs; "
          f"{args.repeats} measurements each{'' if args.no_load else ', one busy process beside'}")
    stop = mp.Event()
    load = None if args.no_load else mp.Process(target=_busy, args=(stop,), daemon=True)
    if load:
        load.start()
    old, new, ort, widths, costs = [], [], [], [], []
    try:
        for i in range(args.repeats):
            threads = torch.get_num_threads()
            old.append(old_measure(base, pruned, example))
            t0 = time.perf_counter()
            lat = measure(base, pruned, example, runtimes=("onnxruntime",))
            costs.append(time.perf_counter() - t0)
            torch.set_num_threads(threads)
            new.append(lat.speedup_batch1)
            lo, hi = lat.speedup_batch1_ci
            widths.append(max(hi / lat.speedup_batch1 - 1, 1 - lo / lat.speedup_batch1))
            r = lat.runtimes["onnxruntime"]
            ort.append(r.speedup_batch1 if r.status == "measured" else float("nan"))
            print(f"  {i + 1:2d}: old {old[-1]:.2f}x   new {new[-1]:.2f}x [{lo:.2f}-{hi:.2f}]"
                  f"{' uncertain' if lat.uncertain else ''}   onnxruntime {ort[-1]:.2f}x   ({costs[-1]:.1f} s)")
    finally:
        stop.set()
        if load:
            load.join(5)
    print("\n| method | batch-1 speedups (min-median-max) | spread (max abs dev from median) |")
    print("|---|---|---|")
    for name, xs in (("old (median of 15 passes)", old), ("new, eager PyTorch", new), ("new, ONNX Runtime", ort)):
        print(f"| {name} | {min(xs):.2f} - {statistics.median(xs):.2f} - {max(xs):.2f}x | {100 * spread(xs):.1f}% |")
    print(f"\nnew: 95% interval half-width median {100 * statistics.median(widths):.1f}%, max {100 * max(widths):.1f}%;"
          f" one measurement (eager + ONNX export + ONNX Runtime) {statistics.median(costs):.1f} s (median)")
    print(f"goal: new within +-10% of its median: {'met' if spread(new) <= 0.10 else 'NOT met'}")


if __name__ == "__main__":
    main()
