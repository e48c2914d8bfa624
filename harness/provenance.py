"""Provenance recorded in every result: versions, commit, host, checkpoint hash."""

from __future__ import annotations

import functools
import platform
import subprocess
from importlib import metadata
from typing import Optional

import torch

import harness
from harness.methods import REPO_ROOT
from specs import SPEC_VERSION
from specs.result import Provenance

# distribution names: importlib.metadata reads the installed version (tp.__version__ misreports 1.6.1 as 1.6.0)
PACKAGES = ("torch", "torchvision", "torch-pruning", "timm", "ultralytics", "pydantic", "numpy", "safetensors",
            "pycocotools", "scikit-learn")


@functools.lru_cache(maxsize=1)
def package_versions() -> dict[str, str]:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


@functools.lru_cache(maxsize=1)
def git_commit() -> Optional[str]:
    try:
        commit = subprocess.run(["git", "-C", str(REPO_ROOT), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO_ROOT), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return (commit + ("-dirty" if dirty else "")) if commit else None


def provenance(checkpoint_sha256: Optional[str], device: str) -> Provenance:
    return Provenance(harness_version=harness.__version__, spec_version=SPEC_VERSION, git_commit=git_commit(),
                      packages=package_versions(), checkpoint_sha256=checkpoint_sha256, host=platform.node(),
                      device=device, torch_threads=torch.get_num_threads())
