"""CLI start-up: `pbench-harness --help` and `methods` against the bare interpreter start and an
`import torch` (what every command paid before the CLI imported heavy modules lazily).

    python benchmarks/cli_startup.py [--repeats 7]

Prints the median wall time of each and the ratios; the target is `--help` under 1 s on 2 cores.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path


def median_time(cmd: list[str], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    cli = shutil.which("pbench-harness") or str(Path(sys.executable).with_name("pbench-harness"))
    cases = {
        "python -c pass": [sys.executable, "-c", "pass"],
        "python -c 'import torch'": [sys.executable, "-c", "import torch"],
        "pbench-harness --help": [cli, "--help"],
        "pbench-harness methods": [cli, "methods"],
        "pbench-harness tracks": [cli, "tracks"],
    }
    res = {name: median_time(cmd, args.repeats) for name, cmd in cases.items()}
    torch_s = res["python -c 'import torch'"]
    print(f"{'command':28s} {'median s':>9s} {'vs import torch':>16s}")
    for name, t in res.items():
        print(f"{name:28s} {t:9.2f} {t / torch_s:15.2f}x")
    verdict = "ok" if res["pbench-harness --help"] < 1.0 else "OVER TARGET"
    print(f"--help: {res['pbench-harness --help']:.2f} s (target < 1 s: {verdict})")


if __name__ == "__main__":
    main()
