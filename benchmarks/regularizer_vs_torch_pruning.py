"""Sparse-training step: the harness with the group_norm regularizer method through the
subprocess runner (the wire protocol, spec 1.1 compact exchange) vs Torch-Pruning's in-process
``GroupNormPruner.regularize(model)``, the same regularizer.

Same model (CIFAR ResNet-18, full width, 10 classes), same weights, same batches (64 x 3x32x32),
same optimizer (the harness's SGD recipe), side by side in one run: steps alternate between the
two so that machine noise hits both alike. Prints the median step time of each, the ratio
(target: harness <= 1.10x Torch-Pruning), the median time of the regularizer part alone, and
checks on the first step that both add the same gradients.

    python benchmarks/regularizer_vs_torch_pruning.py [--steps 12] [--warmup 2] [--threads N]

On a machine shared with other jobs, multi-threaded steps of either side can stall for seconds
(OpenMP barriers waiting for descheduled threads); ``--threads 1`` measures the costs without that
noise. The method process always runs with the thread count of its manifest (1).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
import torch.nn.functional as F
import torch_pruning as tp

from harness.protocol.grouping import PruneConfig, describe_groups
from harness.methods import find_method
from harness.models import classifier_of, create_model
from harness.runners import client_class
from harness.protocol.sparsify import make_grad_hook
from harness.protocol.train import make_optimizer
from specs.track import Recipe

RECIPE = Recipe(epochs=1, batch_size=64, lr=0.01, momentum=0.9, weight_decay=5e-4)


def step(model, opt, x, y, regularize) -> tuple[float, float]:
    """One sparse-training step; returns (step seconds, regularizer seconds)."""
    t0 = time.perf_counter()
    loss = F.cross_entropy(model(x), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    t1 = time.perf_counter()
    regularize()
    t2 = time.perf_counter()
    opt.step()
    return time.perf_counter() - t0, t2 - t1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=12, help="measured steps per side")
    parser.add_argument("--warmup", type=int, default=2, help="unmeasured steps per side first")
    parser.add_argument("--runner", default="subprocess")
    parser.add_argument("--threads", type=int, default=None, help="torch threads of this process (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    base = create_model("resnet18", num_classes=10, in_chans=3, image_size=32)
    example = torch.randn(1, 3, 32, 32)
    g = torch.Generator().manual_seed(0)
    batches = [(torch.randn(64, 3, 32, 32, generator=g), torch.randint(0, 10, (64,), generator=g)) for _ in range(4)]

    # Torch-Pruning: fresh dicts for every mutable default (shared between pruner instances otherwise)
    theirs = copy.deepcopy(base)
    pruner = tp.pruner.GroupNormPruner(
        theirs, example, importance=tp.importance.GroupMagnitudeImportance(p=2), reg=1e-4,
        ignored_layers=[classifier_of(theirs)], in_channel_groups={}, out_channel_groups={}, num_heads={},
        channel_groups={})
    theirs.train()  # building a pruner leaves the model in eval mode
    opt_theirs = make_optimizer(theirs, RECIPE)

    ours = copy.deepcopy(base).train()
    opt_ours = make_optimizer(ours, RECIPE)
    groups = describe_groups(ours, example, PruneConfig(ignored_layers=[classifier_of(ours)]))
    ours.train()
    t0 = time.perf_counter()
    client = client_class(args.runner)(find_method("group_norm"), {"reg": 1e-4}, seed=0)
    client.start()
    start_s = time.perf_counter() - t0
    link = client.regularizer_link(groups)
    hook = make_grad_hook(ours, groups, link)
    steps = iter(range(10**9))
    regularize_ours = lambda: hook(next(steps), 10**6)  # noqa: E731
    regularize_theirs = lambda: pruner.regularize(theirs)  # noqa: E731 - alpha, bias: its defaults

    rows_theirs, rows_ours = [], []
    try:
        # same regularizer: on zero gradients, both must add the same thing
        for model in (theirs, ours):
            for p in model.parameters():
                p.grad = torch.zeros_like(p)
        regularize_theirs()
        regularize_ours()
        grads_theirs = dict(theirs.named_parameters())
        max_diff = max((p.grad - grads_theirs[n].grad).abs().max().item() for n, p in ours.named_parameters())
        max_added = max(p.grad.abs().max().item() for p in theirs.parameters())

        for i in range(args.warmup + args.steps):
            x, y = batches[i % len(batches)]
            sides = [(rows_theirs, theirs, opt_theirs, regularize_theirs), (rows_ours, ours, opt_ours, regularize_ours)]
            if i % 2:  # alternate which side goes first
                sides.reverse()
            for rows, model, opt, regularize in sides:
                r = step(model, opt, x, y, regularize)
                if i >= args.warmup:
                    rows.append(r)
    finally:
        link.close()
        client.close()

    med = lambda rows, j: statistics.median(r[j] for r in rows)  # noqa: E731
    a, b = med(rows_ours, 0), med(rows_theirs, 0)
    n_params = sum(p.numel() for p in base.parameters())
    print(f"resnet18 (width 1, {n_params / 1e6:.1f}M params) cifar 32x32, batch 64, {torch.get_num_threads()} threads, "
          f"median of {args.steps} steps per side (method start {start_s:.2f} s, not included):")
    print(f"  harness + group_norm ({args.runner} runner, spec 1.1): step {a * 1e3:8.1f} ms   "
          f"regularizer part {med(rows_ours, 1) * 1e3:6.1f} ms")
    print(f"  Torch-Pruning GroupNormPruner.regularize (in-process): step {b * 1e3:8.1f} ms   "
          f"regularizer part {med(rows_theirs, 1) * 1e3:6.1f} ms")
    print(f"  first step: max |difference| of the added gradients = {max_diff:.2e} "
          f"(largest added value {max_added:.2e})")
    print(f"  ratio harness / Torch-Pruning (step): {a / b:.3f}x (target <= 1.10x)")


if __name__ == "__main__":
    main()
