"""Progressive pruning: the harness's prune stage with ``pruning.rounds = N`` vs Torch-Pruning's
progressive loop taking the same N steps (importance recomputed on the partly pruned model at
every step, as PruningBench's ``--iterative-steps`` runs it).

Both sides prune the same CIFAR ResNet-18 (100 classes, 3x32x32, same random weights) to the same
MACs speedup with global MagnitudeL2 and a 10% floor:

- Torch-Pruning: reproduce/main.py's ``progressive_pruning`` exactly as PruningBench calls it:
  ``MagnitudePruner(global_pruning=True, iterative_steps=S, pruning_ratio=1.0, max_pruning_ratio=0.9)``,
  ``step()`` and count MACs until the target is reached; it takes N of its S steps;
- harness: the real prune stage (``harness.protocol.run._prune_stage``) of the cifar100-resnet18
  track with ``rounds: N`` (the N Torch-Pruning took), the method out of process (subprocess runner):
  N score requests; the first N-1 rounds apply the step the per-layer MACs model predicts, the last
  searches the exact minimum on pruned copies.

Side by side, interleaved, in one run; prints medians and the time ratio (target <= 1.5x).

    python benchmarks/prune_vs_torch_pruning.py [--steps 64] [--speedup 2] [--repeats 3]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch_pruning as tp

from harness.data.fixtures import write_tiny_cifar
from harness.methods import find_method
from harness.models import classifier_of, create_model
from harness.protocol.grouping import count_macs_params, layer_channels
from harness.protocol.run import Dense, RunSpec, _prune_stage
from harness.tasks import task_for
from harness.tracks import load_track


def tp_pruner(model, example, steps: int, ratio: float):
    return tp.pruner.MagnitudePruner(model, example, importance=tp.importance.MagnitudeImportance(p=2),
                                     global_pruning=True, iterative_steps=steps, pruning_ratio=ratio,
                                     max_pruning_ratio=0.9, ignored_layers=[classifier_of(model)])


def torch_pruning_loop(model, example, target: float, steps: int):
    t0 = time.perf_counter()
    model.eval()
    pruner = tp_pruner(model, example, steps, 1.0)
    base, _ = tp.utils.count_ops_and_params(model, example_inputs=example)
    speedup = 1.0
    while speedup < target:  # reproduce/main.py: progressive_pruning
        pruner.step()
        speedup = base / tp.utils.count_ops_and_params(model, example_inputs=example)[0]
        if pruner.current_step == pruner.iterative_steps:
            break
    return time.perf_counter() - t0, speedup, pruner.current_step


def harness_stage(spec, task, model, example, dense):
    t0 = time.perf_counter()
    pruned = _prune_stage(spec, task, model, example, dense, None)
    return time.perf_counter() - t0, dense.macs / pruned.macs, pruned


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=64, help="Torch-Pruning's iterative_steps")
    parser.add_argument("--speedup", type=float, default=2.0)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = create_model("resnet18", num_classes=100, in_chans=3, image_size=32).eval()
    example = torch.randn(1, 3, 32, 32)
    track = load_track("cifar100-resnet18")
    with tempfile.TemporaryDirectory() as data:
        write_tiny_cifar(data, "cifar100", n_train=200, n_test=10)  # calibration data (unused by MagnitudeL2)
        task = task_for(track, data_root=Path(data))
        macs, params = count_macs_params(model, example)
        dense = Dense(macs, params, layer_channels(model))
        ours, theirs, spec = [], [], None
        for _ in range(args.repeats):  # interleaved, so machine noise hits both alike
            t2, s2, rounds = torch_pruning_loop(copy.deepcopy(model), example, args.speedup, args.steps)
            theirs.append(t2)
            if spec is None:  # as many rounds as Torch-Pruning took steps
                rounds_track = track.model_copy(update={"pruning": track.pruning.model_copy(update={"rounds": rounds})})
                spec = RunSpec(track=rounds_track, method=find_method("magnitude_l2"), speedup=args.speedup, seed=0,
                               runner="subprocess", data_root=Path(data), measure_latency=False, save_models=False)
            t, s, pruned = harness_stage(spec, task, copy.deepcopy(model), example, dense)
            ours.append(t)
    a, b = statistics.median(ours), statistics.median(theirs)
    n = spec.track.pruning.rounds
    print(f"resnet18/cifar100 to {args.speedup:g}x in {n} rounds, median of {args.repeats}:")
    print(f"  Torch-Pruning progressive loop (in-process, iterative_steps={args.steps}): {b:7.2f} s  "
          f"achieved {s2:.3f}x  ({n} steps)")
    print(f"  harness prune stage (subprocess MagnitudeL2, protected global, rounds={n}): {a:7.2f} s  "
          f"achieved {s:.3f}x  (inside the method {pruned.score_s:.2f} s)")
    print(f"  per round: harness {a / n:.3f} s, Torch-Pruning {b / n:.3f} s")
    print(f"  ratio harness / Torch-Pruning: {a / b:.3f}x (target <= 1.5x)")


if __name__ == "__main__":
    main()
