"""Progressive pruning: the harness's prune stage with ``pruning.rounds = N`` vs Torch-Pruning's
progressive loop taking the same N steps (importance recomputed on the partly pruned model at
every step, as PruningBench's ``--iterative-steps`` runs it).

Both sides prune the same model (same random weights) to the same MACs speedup with global
MagnitudeL2 and a 10% floor:

- Torch-Pruning: reproduce/main.py's ``progressive_pruning`` exactly as PruningBench calls it:
  ``MagnitudePruner(global_pruning=True, iterative_steps=S, pruning_ratio=1.0, max_pruning_ratio=0.9)``,
  ``step()`` and count MACs until the target is reached; it takes N of its S steps;
- harness: the real prune stage (``harness.protocol.run.prune_stage``) of the track with ``rounds: N``
  (the N Torch-Pruning took), the method out of process (subprocess runner): N score requests; the
  first N-1 rounds apply the step the per-layer MACs model predicts, the last searches the exact
  minimum.

Side by side, interleaved, in one run; medians. Printed, in this order:

1. the whole-stage ratio (harness stage, the method's process start included / Torch-Pruning's loop);
2. the same in a sweep: every run after the first takes over a spare, the method process launched while
   the previous run retrained (:mod:`harness.runners.spares`; here the cold stage launches it as a sweep's
   run does, and it is waited for before the next stage, so that it never starts beside a timed loop);
3. the ratio without the process start (the part of it the stage waited for: the method starts on a
   thread while the stage builds the graph and collects observations; Torch-Pruning has no process);
4. per round: the harness's overhead (stage without process start and without the score round trips)
   against Torch-Pruning's loop per step. A round trip (``score_s``) is the method's compute plus the
   harness's side of the exchange (writing observations, reading and validating scores); the protocol
   does not report the method's compute apart, so the overhead printed leaves that exchange out: it is
   the stage's graph, observations, planning, pruning and counting;
5. what isolation costs: the same stage with the method inside the harness's process (the ``inprocess``
   runner, for debugging: no process, no observations written or read, the method computing on the
   harness's threads instead of the one CPU its manifest declares).

    python benchmarks/prune_vs_torch_pruning.py                       # CIFAR ResNet-18, 10 rounds
    python benchmarks/prune_vs_torch_pruning.py --steps 640           # ~100 rounds (the CIFAR tracks')
    python benchmarks/prune_vs_torch_pruning.py --track imagenet-resnet50 --steps 190 --repeats 1  # ~30 rounds
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch_pruning as tp

from harness.data.fixtures import write_tiny_cifar, write_tiny_imagefolder
from harness.methods import find_method
from harness.models import classifier_of
from harness.models.base import build_model
from harness.protocol.run import Dense, RunSpec, next_method, prune_stage
from harness.runners import spares
from harness.tasks import task_for
from harness.tracks import load_track

#: classes of the model each dataset's tracks prune (the tiny fixture stands in for the data)
CLASSES = {"cifar10": 10, "cifar100": 100, "imagenet": 1000}


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
    pruned = prune_stage(spec, task, model, example, dense, None)
    return time.perf_counter() - t0, dense.macs / pruned.macs, pruned


def wait_for_spare() -> None:
    """Wait until the spare the stage launched (as a sweep's run does once its prune stage is done) has
    started, so that it is not starting while a timed loop runs."""
    spare = spares.current()
    if spare is None or not spare.connected(120):
        raise SystemExit("the stage launched no spare method, or it did not start within 120 s")


def tiny_data(track, root: str) -> None:
    """Calibration data in the track's on-disk format (unused by MagnitudeL2, loaded all the same)."""
    if track.dataset.name == "imagenet":
        write_tiny_imagefolder(root, num_classes=4, n_train=16, n_val=4)
    else:
        write_tiny_cifar(root, track.dataset.name, n_train=200, n_test=10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--track", default="cifar100-resnet18", help="the track whose model and prune stage run")
    parser.add_argument("--steps", type=int, default=64,
                        help="Torch-Pruning's iterative_steps (the harness runs as many rounds as it takes)")
    parser.add_argument("--speedup", type=float, default=2.0)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    track = load_track(args.track)
    size = track.dataset.image_size or 32
    torch.manual_seed(0)
    model = build_model(track.model, CLASSES.get(track.dataset.name, 10), 3, size).eval()
    example = torch.randn(1, 3, size, size)
    with tempfile.TemporaryDirectory() as data:
        tiny_data(track, data)
        task = task_for(track, data_root=Path(data))
        dense = Dense.of(model, example)
        ours, theirs, starts, waits, inside, spec, warm = [], [], [], [], [], None, []
        unisolated, unisolated_score = [], []
        for _ in range(args.repeats):  # interleaved, so machine noise hits both alike
            t2, s2, rounds = torch_pruning_loop(copy.deepcopy(model), example, args.speedup, args.steps)
            theirs.append(t2)
            if spec is None:  # as many rounds as Torch-Pruning took steps
                rounds_track = track.model_copy(update={"pruning": track.pruning.model_copy(update={"rounds": rounds})})
                spec = RunSpec(track=rounds_track, method=find_method("magnitude_l2"), speedup=args.speedup, seed=0,
                               runner="subprocess", data_root=Path(data), measure_latency=False, save_models=False)
            with spares.expecting(next_method(spec)):  # a sweep's next run is this run again: the stage stocks it
                t, s, pruned = harness_stage(spec, task, copy.deepcopy(model), example, dense)
            ours.append(t)
            starts.append(pruned.start_s)
            waits.append(pruned.start_wait_s)
            inside.append(pruned.score_s)
            wait_for_spare()
            taken = spares.taken
            warm.append(harness_stage(spec, task, copy.deepcopy(model), example, dense)[0])
            assert spares.taken == taken + 1, "the stage did not take the spare"
            t, _, pruned = harness_stage(dataclasses.replace(spec, runner="inprocess"), task, copy.deepcopy(model),
                                         example, dense)
            unisolated.append(t)
            unisolated_score.append(pruned.score_s)
    med = statistics.median
    stage, loop, n = med(ours), med(theirs), spec.track.pruning.rounds
    no_start = med([t - w for t, w in zip(ours, waits)])
    overhead = med([t - w - i for t, w, i in zip(ours, waits, inside)])
    print(f"{track.model.name}/{track.dataset.name} {size}px to {args.speedup:g}x in {n} rounds, "
          f"median of {args.repeats}:")
    print(f"  Torch-Pruning progressive loop (in-process, iterative_steps={args.steps}): {loop:7.2f} s  "
          f"achieved {s2:.3f}x  ({n} steps)")
    print(f"  harness prune stage (subprocess MagnitudeL2, protected global, rounds={n}): {stage:7.2f} s  "
          f"achieved {s:.3f}x")
    print(f"  ratio harness / Torch-Pruning: {stage / loop:.3f}x (whole stage; target <= 1.5x at 10 rounds, "
          f"<= 1.1x at 100)")
    print(f"  ratio in a sweep (a spare: the method launched while the previous run retrained): "
          f"{med(warm) / loop:.3f}x  ({med(warm):.2f} s)")
    print(f"  ratio without the process start: {no_start / loop:.3f}x  (start {med(starts):.2f} s on its "
          f"thread, {med(waits):.2f} s of it waited for)")
    print(f"  per round: harness overhead {overhead / n:.3f} s (without start and score round trips, so without the "
          f"harness's own writing of observations and reading of scores either), score "
          f"round trip {med(inside) / n:.3f} s (the method's compute and the harness's writing of observations "
          f"and reading of scores); Torch-Pruning {loop / n:.3f} s per step; overhead ratio "
          f"{overhead / loop:.3f}x (target <= 1.0x)")
    print(f"  what isolation costs: the same stage with the method inside the harness's process (runner inprocess: "
          f"no process, no observations written or read, the harness's {torch.get_num_threads()} threads): "
          f"{med(unisolated) / loop:.3f}x ({med(unisolated):.2f} s; the method's compute {med(unisolated_score) / n:.3f} s "
          f"per round)")


if __name__ == "__main__":
    main()
