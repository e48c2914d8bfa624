"""Write a tiny CIFAR-10/100 fixture in the official python-pickle layout.

    python datasets/make_tiny.py cifar10 OUT_DIR [--n-train 1000] [--n-test 200] [--seed 0]

creates OUT_DIR/cifar-10-batches-py/ (or OUT_DIR/cifar-100-python/); pass
OUT_DIR as --data-root. See datasets/README.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

try:
    from harness.data.fixtures import write_tiny_cifar
except ImportError:  # run from a checkout without installing: use the repo root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from harness.data.fixtures import write_tiny_cifar


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("kind", choices=["cifar10", "cifar100"])
    p.add_argument("out_dir", type=Path, help="data root to write into (created if missing)")
    p.add_argument("--n-train", type=int, default=1000, help="train images (default: 1000)")
    p.add_argument("--n-test", type=int, default=200, help="test images (default: 200)")
    p.add_argument("--seed", type=int, default=0, help="generator seed (default: 0)")
    a = p.parse_args(argv)
    folder = write_tiny_cifar(a.out_dir, a.kind, n_train=a.n_train, n_test=a.n_test, seed=a.seed)
    print(f"wrote {a.kind} ({a.n_train} train / {a.n_test} test) to {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
