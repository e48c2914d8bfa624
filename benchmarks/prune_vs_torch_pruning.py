"""Pruning step: the harness (protected global MagnitudeL2 through the subprocess runner)
vs Torch-Pruning's in-process progressive loop (reproduce/main.py: MagnitudePruner,
global, 400 iterative steps, count MACs after each step until the target speedup).

Same model (CIFAR ResNet-18, 100 classes, 3x32x32), same weights, side by side in one run.
Prints medians over --repeats and the time ratio (target: harness <= 0.5x Torch-Pruning).

    python benchmarks/prune_vs_torch_pruning.py [--speedup 2] [--repeats 3]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
import torch_pruning as tp

from harness.protocol.grouping import PruneConfig, count_macs_params, describe_groups
from harness.methods import find_method
from harness.models import classifier_of, create_model
from harness.protocol.observations import collect
from harness.protocol.pruning import make_planner, search_speedup
from harness.runners import client_class


def torch_pruning_loop(model, example, target):
    t0 = time.perf_counter()
    model.eval()
    pruner = tp.pruner.MagnitudePruner(model, example, importance=tp.importance.MagnitudeImportance(p=2),
                                       global_pruning=True, iterative_steps=400, pruning_ratio=1.0,
                                       max_pruning_ratio=0.9, ignored_layers=[classifier_of(model)])
    base, _ = tp.utils.count_ops_and_params(model, example_inputs=example)
    speedup = 1.0
    while speedup < target:
        pruner.step()
        speedup = base / tp.utils.count_ops_and_params(model, example_inputs=example)[0]
        if pruner.current_step == pruner.iterative_steps:
            break
    return time.perf_counter() - t0, speedup, pruner.current_step


def harness_step(client, model, example, target):
    t0 = time.perf_counter()
    config_for = lambda m: PruneConfig(ignored_layers=[classifier_of(m)])  # noqa: E731
    base, _ = count_macs_params(model, example)
    groups = describe_groups(model, example, config_for(model))
    obs = collect(client.observations, model, groups, batches=[])
    scores = client.score(0, groups, obs)
    planner = make_planner(groups, scores, {g.id: g.n_channels for g in groups}, "protected_global", 0.1, seed=0)
    found = search_speedup(model, example, config_for, planner, base, base, target)
    return time.perf_counter() - t0, base / found.macs, found.evaluations


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--speedup", type=float, default=2.0)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = create_model("resnet18", num_classes=100, in_chans=3, image_size=32).eval()
    example = torch.randn(1, 3, 32, 32)

    t0 = time.perf_counter()
    client = client_class("subprocess")(find_method("magnitude_l2"), {}, seed=0)
    client.start()
    start_s = time.perf_counter() - t0
    ours, theirs = [], []
    try:
        for _ in range(args.repeats):  # interleaved, so machine noise hits both alike
            t, s, probes = harness_step(client, copy.deepcopy(model), example, args.speedup)
            ours.append(t)
            t2, s2, steps = torch_pruning_loop(copy.deepcopy(model), example, args.speedup)
            theirs.append(t2)
    finally:
        client.close()
    a, b = statistics.median(ours), statistics.median(theirs)
    print(f"resnet18/cifar100 to {args.speedup:g}x, median of {args.repeats}:")
    print(f"  harness (subprocess MagnitudeL2, protected global): {a:7.2f} s  achieved {s:.3f}x  "
          f"({probes} pruned-copy probes; method start {start_s:.2f} s, not included)")
    print(f"  Torch-Pruning progressive loop (in-process):        {b:7.2f} s  achieved {s2:.3f}x  ({steps} steps)")
    print(f"  ratio harness / Torch-Pruning: {a / b:.3f}x (target <= 0.5x)")


if __name__ == "__main__":
    main()
