"""The GPU check (run by benchmarks/gpu_check.sh on a machine with a CUDA GPU; < 8 minutes on one).

1. Retraining throughput (images/s) on cifar100-resnet18's network with random data in CIFAR's shape
   (in memory, on the GPU): the harness's loop (``harness.protocol.train.train``) with the track's
   retrain recipe plus AMP (fp16) and channels_last, against a minimal PyTorch loop doing the same
   work (SGD 0.9, fp16 autocast + GradScaler, channels_last, step schedule), side by side,
   interleaved; both without augmentation (apples to apples, target >= 0.9x), and the harness once
   more with the track's crop/flip (what a retrain costs).
2. Pruning step time of magnitude_l2, taylor and hrank on cifar100-resnet18 at 2x (random weights,
   random calibration images; subprocess runner): the harness's whole prune stage one-shot and with
   --rounds rounds (time per round), against PruningBench's published step times (their per-step
   figure: the same at 2x, 4x and 8x) for ResNet-18 / CIFAR-100.

Prints a table and writes the figures as JSON (--json). ``--device cpu --allow-cpu`` runs the same
code at toy sizes (the test suite's smoke check; its figures mean nothing).
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

from harness.data.fixtures import write_tiny_cifar
from harness.methods import find_method
from harness.models import create_model
from harness.protocol.run import Dense, RunSpec, prune_stage
from harness.protocol.train import lr_factor, train
from harness.tasks import task_for
from harness.tracks import load_track

#: PruningBench's published step times, ResNet-18 / CIFAR-100 (../shared/reference/pruningbench_leaderboards.csv:
#: 0.261s, 1.598s, 9m8s; the same at 2x, 4x and 8x, so a time per pruning step), in seconds
PUBLISHED_STEP_S = {"magnitude_l2": 0.261, "taylor": 1.598, "hrank": 9 * 60 + 8}


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def minimal_loop(model, x_all, y_all, recipe, steps: int, device: str) -> None:
    """The same optimization as the harness's recipe, written as plainly as PyTorch allows."""
    model.to(device, memory_format=torch.channels_last).train()
    opt = torch.optim.SGD(model.parameters(), lr=recipe.lr, momentum=recipe.momentum,
                          weight_decay=recipe.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(recipe, s, steps, steps))
    amp = device.startswith("cuda")
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    g = torch.Generator().manual_seed(0)
    order = torch.randperm(len(x_all), generator=g).to(device)
    b = recipe.batch_size
    for i in range(steps):
        idx = order[i * b:(i + 1) * b]
        x = x_all[idx].contiguous(memory_format=torch.channels_last)
        with torch.autocast("cuda", dtype=torch.float16, enabled=amp):
            loss = F.cross_entropy(model(x), y_all[idx])
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        sched.step()
    sync(device)


def retrain_throughput(device: str, steps: int, repeats: int, width: float = 1.0) -> dict:
    track = load_track("cifar100-resnet18")
    recipe = track.retrain.model_copy(update={"epochs": 1, "amp": True, "channels_last": True})
    plain = recipe.model_copy(update={"augmentation": "none"})
    n = steps * recipe.batch_size
    gen = torch.Generator().manual_seed(0)
    x_all = torch.randn(n, 3, 32, 32, generator=gen).to(device)
    y_all = torch.randint(0, 100, (n,), generator=gen).to(device)
    ds = TensorDataset(x_all, y_all)
    torch.manual_seed(0)
    base = create_model("resnet18", num_classes=100, in_chans=3, image_size=32, width=width)
    if device.startswith("cuda"):
        torch.backends.cudnn.benchmark = True  # the minimal loop gets what the harness's loop sets itself

    def time_it(fn) -> float:
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        return n / (time.perf_counter() - t0)

    runs = {"harness": lambda: train(copy.deepcopy(base), ds, plain, seed=0, device=device),
            "harness_crop_flip": lambda: train(copy.deepcopy(base), ds, recipe, seed=0, device=device),
            "minimal": lambda: minimal_loop(copy.deepcopy(base), x_all, y_all, plain, steps, device)}
    for fn in runs.values():  # warm-up: cuDNN autotuning, allocator
        fn()
    rates: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(repeats):  # interleaved
        for name, fn in runs.items():
            rates[name].append(time_it(fn))
    out = {k: statistics.median(v) for k, v in rates.items()}
    out["ratio"] = out["harness"] / out["minimal"]
    out.update(steps=steps, batch=recipe.batch_size, repeats=repeats)
    return out


def prune_step_times(device: str, methods: list[str], rounds: int, calibration: int, width: float = 1.0) -> dict:
    out = {}
    with tempfile.TemporaryDirectory() as data:
        write_tiny_cifar(data, "cifar100", n_train=max(200, calibration), n_test=10)
        for method in methods:
            row = {"published_step_s": PUBLISHED_STEP_S.get(method)}
            for r in (1, rounds):
                track = load_track("cifar100-resnet18")
                track = track.model_copy(update={
                    "pruning": track.pruning.model_copy(update={"rounds": r}),
                    "calibration": track.calibration.model_copy(update={"num_samples": calibration})})
                task = task_for(track, data_root=Path(data), device=device)
                torch.manual_seed(0)
                model = create_model("resnet18", num_classes=100, in_chans=3, image_size=32,
                                     width=width).to(device).eval()
                example = task.example_inputs()
                spec = RunSpec(track=track, method=find_method(method), speedup=2, seed=0, runner="subprocess",
                               data_root=Path(data), device=device, measure_latency=False, save_models=False)
                dense = Dense.of(model, example)
                t0 = time.perf_counter()
                pruned = prune_stage(spec, task, model, example, dense, None)
                wall = time.perf_counter() - t0
                key = "one_shot" if r == 1 else f"rounds_{r}"
                row[key] = {"stage_s": wall, "step_s": pruned.step_s, "per_round_s": pruned.step_s / r,
                            "method_s": pruned.score_s, "speedup": dense.macs / pruned.macs}
            out[method] = row
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--allow-cpu", action="store_true", help="run on the CPU (a smoke test of this script)")
    parser.add_argument("--steps", type=int, default=200, help="training steps per timed run")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=10, help="progressive rounds for the per-round time")
    parser.add_argument("--calibration", type=int, default=1024, help="calibration images (the track's: 1024)")
    parser.add_argument("--methods", default="magnitude_l2,taylor,hrank")
    parser.add_argument("--width", type=float, default=1.0, help="network width (the track's: 1; smaller for a "
                                                                  "smoke test)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("gpu_check: no CUDA device here (torch.cuda.is_available() is False): nothing measured",
              file=sys.stderr)
        return 3
    if args.device == "cpu" and not args.allow_cpu:
        print("gpu_check: --device cpu needs --allow-cpu (a smoke test: its figures mean nothing)", file=sys.stderr)
        return 2
    name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    t0 = time.perf_counter()
    train_figs = retrain_throughput(args.device, args.steps, args.repeats, args.width)
    print(f"device: {name}, torch {torch.__version__}")
    print(f"retrain cifar100-resnet18 (batch {train_figs['batch']}, AMP + channels_last, {args.steps} steps, "
          f"median of {args.repeats}):")
    print(f"  harness train(), no augmentation: {train_figs['harness']:9.0f} images/s")
    print(f"  minimal PyTorch loop:             {train_figs['minimal']:9.0f} images/s")
    print(f"  harness train(), crop + flip:     {train_figs['harness_crop_flip']:9.0f} images/s")
    print(f"  ratio harness / minimal: {train_figs['ratio']:.3f}x (target >= 0.9x)")
    prune_figs = prune_step_times(args.device, args.methods.split(","), args.rounds, args.calibration, args.width)
    print("pruning step, cifar100-resnet18 to 2x (subprocess runner), vs PruningBench's published step time:")
    for method, row in prune_figs.items():
        pub = row["published_step_s"]
        per = row[f"rounds_{args.rounds}"]["per_round_s"]
        print(f"  {method:13s} one-shot {row['one_shot']['step_s']:8.2f} s; {args.rounds} rounds: "
              f"{per:8.3f} s per round; PruningBench: {'%.3f s' % pub if pub is not None else 'n/a'}"
              + (f" (ours per round / theirs per step: {per / pub:.2f}x)" if pub else ""))
    total = time.perf_counter() - t0
    print(f"gpu check took {total:.0f} s")
    if args.json:
        args.json.write_text(json.dumps({"device": name, "torch": torch.__version__, "retrain": train_figs,
                                         "prune": prune_figs, "wall_s": total}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
