"""Channel rounding (``pruning.round_to``) and the runtime users deploy: the Torch-Pruning #38 case.

MobileNetV2 (torchvision, 224 px) and ResNet-18 (torchvision, 112 px) pruned to 2x MACs by
magnitude_l2 through the harness's planner with round_to 1, 8 and 16, each timed against its base
in eager PyTorch and in ONNX Runtime on the CPU (:func:`harness.protocol.latency.measure`: paired
blocks, one thread, Hodges-Lehmann speedup with its 95% interval), side by side. Pruned channel counts
that are not multiples of 8 can make ONNX Runtime's CPU kernels slower than the unpruned model's.

    PYTHONPATH=. python benchmarks/round_to.py [--models mobilenet_v2,resnet18] [--round-to 1,8,16]
"""

from __future__ import annotations

import argparse

import torch
import torchvision
import torch.nn as nn

from harness.protocol.grouping import count_macs_params, describe_groups
from harness.protocol.latency import measure
from harness.protocol.pruning import make_planner, search_speedup

from latency_stability import config, magnitude_l2

SIZES = {"mobilenet_v2": 224, "resnet18": 112}


def build(name: str) -> nn.Module:
    torch.manual_seed(0)
    return torchvision.models.get_model(name, weights=None, num_classes=1000).eval()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="mobilenet_v2,resnet18")
    ap.add_argument("--round-to", default="1,8,16")
    ap.add_argument("--target", type=float, default=2.0)
    args = ap.parse_args()
    print("| model | round_to | MACs speedup | groups not a multiple of 8 | eager batch-1 speedup [95%] | "
          "ONNX Runtime batch-1 speedup [95%] | ONNX Runtime ms (base -> pruned) | max abs diff |")
    print("|---|---|---|---|---|---|---|---|")
    for name in args.models.split(","):
        size = SIZES.get(name, 112)
        model = build(name)
        example = torch.rand(1, 3, size, size)
        groups = describe_groups(model, example, config(model))
        scores = magnitude_l2(groups, model)
        macs, _ = count_macs_params(model, example)
        for r in (int(v) for v in args.round_to.split(",")):
            planner = make_planner(groups, scores, {g.id: g.n_channels for g in groups}, "protected_global", 0.1,
                                   seed=0, round_to=r)
            found = search_speedup(model, example, config, planner, macs, macs, args.target)
            after = {g.id: g for g in describe_groups(found.model, example, config(found.model))}
            odd = sum((after[g.id].n_channels // g.ch_groups) % 8 != 0 for g in groups if g.id in after)
            lat = measure(model, found.model.eval(), example, throughput_batch=2, runtimes=("onnxruntime",),
                          calibration=torch.rand(2, 3, size, size))
            o = lat.runtimes["onnxruntime"]
            e_ci, o_ci = lat.speedup_batch1_ci, o.speedup_batch1_ci
            ort = (f"{o.speedup_batch1:.2f}x [{o_ci[0]:.2f}-{o_ci[1]:.2f}]" if o.status == "measured"
                   else f"{o.status}: {o.reason}")
            ms = f"{o.batch1_base_ms:.2f} -> {o.batch1_pruned_ms:.2f}" if o.status == "measured" else "-"
            diff = f"{o.max_abs_diff:.1e}" if o.max_abs_diff is not None else "-"
            print(f"| {name} | {r} | {macs / found.macs:.2f}x | {odd}/{len(groups)} | {lat.speedup_batch1:.2f}x "
                  f"[{e_ci[0]:.2f}-{e_ci[1]:.2f}] | {ort} | {ms} | {diff} |", flush=True)


if __name__ == "__main__":
    main()
