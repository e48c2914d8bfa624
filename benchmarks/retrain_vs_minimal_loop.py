"""Retraining throughput: the harness's training loop (harness.protocol.train.train, the loop every
track's retrain recipe uses) vs a minimal PyTorch loop doing the same work (SGD + momentum,
cosine schedule, cross-entropy), side by side in one run. Target: >= 0.95x throughput.

    python benchmarks/retrain_vs_minimal_loop.py [--repeats 3] [--epochs 1]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
import torch.nn.functional as F

from harness.data import load_dataset
from harness.models import create_model
from harness.protocol.train import train
from specs.track import Recipe


def minimal_loop(model, ds, recipe: Recipe, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    x_all, y_all = ds.tensors
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=recipe.lr, momentum=recipe.momentum,
                          weight_decay=recipe.weight_decay, nesterov=True)
    steps = len(x_all) // recipe.batch_size * recipe.epochs
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    for _ in range(recipe.epochs):
        order = torch.randperm(len(x_all), generator=g)
        for i in range(0, len(x_all) - recipe.batch_size + 1, recipe.batch_size):
            idx = order[i:i + recipe.batch_size]
            loss = F.cross_entropy(model(x_all[idx]), y_all[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=1)
    args = parser.parse_args()
    data = load_dataset("digits")
    recipe = Recipe(epochs=args.epochs, batch_size=64, lr=0.01, schedule="cosine")
    torch.manual_seed(0)
    model = create_model("resnet18", num_classes=10, in_chans=1, image_size=8, width=0.5)
    n = len(data.train) // recipe.batch_size * recipe.batch_size * recipe.epochs
    ours, minimal = [], []
    for r in range(args.repeats):  # interleaved
        m = copy.deepcopy(model)
        t0 = time.perf_counter()
        train(m, data.train, recipe, seed=r)
        ours.append(n / (time.perf_counter() - t0))
        m = copy.deepcopy(model)
        t0 = time.perf_counter()
        minimal_loop(m, data.train, recipe, seed=r)
        minimal.append(n / (time.perf_counter() - t0))
    a, b = statistics.median(ours), statistics.median(minimal)
    print(f"resnet18 (width 0.5) on digits, batch {recipe.batch_size}, median of {args.repeats}:")
    print(f"  harness train():    {a:8.0f} samples/s")
    print(f"  minimal torch loop: {b:8.0f} samples/s")
    print(f"  throughput ratio harness / minimal: {a / b:.3f}x (target >= 0.95x)")


if __name__ == "__main__":
    main()
