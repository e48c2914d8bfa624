"""Score exchange for a ResNet-50-sized model (torchvision resnet50, 25.6M parameters) through
the docker runner vs in-process, and container start time, side by side in one run.

Two docker rows: the method as it declares itself (spec 1.0: its exchange directory on a host
tmpfs, replies as files) and the same image declared spec 1.3 (exchange read-only, replies on the
socket).

Targets: <= +0.5 s per exchange (docker minus in-process); start <= 2 s.

    python benchmarks/docker_exchange.py [--repeats 5]

Needs a Docker Engine and the method image (`make images`).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torchvision

from harness.protocol.grouping import PruneConfig, describe_groups
from harness.methods import find_method, load_source
from harness.protocol.observations import collect
from harness.runners import client_class


def timed_scores(client, groups, obs, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        client.score(0, groups, obs)
        times.append(time.perf_counter() - t0)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--method", default="magnitude_l2")
    args = parser.parse_args()
    model = torchvision.models.resnet50(weights=None).eval()
    example = torch.randn(1, 3, 224, 224)
    groups = describe_groups(model, example, PruneConfig(ignored_layers=[model.fc]))
    obs = collect(["weights"], model, groups, batches=[])
    n_params = sum(p.numel() for p in model.parameters())
    source = find_method(args.method)
    inline_dir = Path(tempfile.mkdtemp()) / source.id  # the same method (and image), declared spec 1.3
    shutil.copytree(source.path, inline_dir)
    manifest = json.loads((inline_dir / "manifest.json").read_text())
    (inline_dir / "manifest.json").write_text(json.dumps({**manifest, "spec_version": "1.3"}))
    variants = {"inprocess": ("inprocess", source), "subprocess": ("subprocess", source),
                "docker": ("docker", source), "docker 1.3": ("docker", load_source(inline_dir))}

    starts, results = {}, {}
    for name, (runner, src) in variants.items():
        starts[name] = []
        for _ in range(args.repeats if runner != "inprocess" else 1):
            t0 = time.perf_counter()
            client = client_class(runner)(src, {}, seed=0)
            client.start()
            starts[name].append(time.perf_counter() - t0)
            if name not in results:
                results[name] = timed_scores(client, groups, obs, args.repeats)
            client.close()
    base = statistics.median(results["inprocess"])
    print(f"resnet50: {n_params / 1e6:.1f}M parameters, {len(groups)} groups, "
          f"{sum(t.numel() for t in obs['weights'].values()) * 4 / 2**20:.0f} MB of weights per exchange; "
          f"median of {args.repeats}")
    print(f"{'runner':<12}{'start s':>9}{'exchange s':>12}{'overhead s':>12}")
    for runner in results:
        ex = statistics.median(results[runner])
        print(f"{runner:<12}{statistics.median(starts[runner]):>9.2f}{ex:>12.3f}{ex - base:>+12.3f}")
    over = statistics.median(results["docker"]) - base
    print(f"docker: exchange overhead {over:+.3f} s (target <= +0.5 s), "
          f"start {statistics.median(starts['docker']):.2f} s (target <= 2 s); spec 1.3 / 1.0 exchange ratio "
          f"{statistics.median(results['docker 1.3']) / statistics.median(results['docker']):.2f}")
    shutil.rmtree(inline_dir.parent, ignore_errors=True)


if __name__ == "__main__":
    main()
