"""Disk preflight: ``sweep`` and ``blind-eval`` start no run while the result store, or the Docker
Engine's data root (images, container logs; docker runner only), has less than ``min_free_mb`` free.

A run that starts on a nearly full disk fails half-way (a checkpoint, a model, an image layer or a log
that cannot be written) and can take the engine and the other runs down with it; refusing before the
run starts records nothing and loses nothing: completed runs stay published, and the same command
resumes once space is freed. The default, :data:`DEFAULT_MIN_FREE_MB`, covers what one run of the
largest built-in tracks writes (three ResNet-50 / YOLOv8m checkpoints, ~0.3 GB) plus a method image
loaded by ``blind-eval`` (~1.4 GB for an image on the reference base).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

from harness.errors import HarnessError

DEFAULT_MIN_FREE_MB = 2048


class LowDisk(HarnessError):
    """Too little free space to start a run; ``str()`` is one line."""


def free_mb(path: Path) -> float:
    """Free space (MB, as an unprivileged user sees it) on the file system that holds ``path`` or, if
    it does not exist yet, its nearest existing parent."""
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize / 2**20


def engine_data_root() -> Optional[Path]:
    """The Docker Engine's data root, when it is on this machine (``docker info``); else None."""
    from harness.runners.docker_runner import docker_client
    root = Path(docker_client().info().get("DockerRootDir") or "")
    return root if str(root) and root.exists() else None


def check_free_space(store: Path, docker: bool, min_free_mb: Optional[float] = None,
                     before: str = "starting a run") -> None:
    """Raise :class:`LowDisk` unless the result store (and, for ``docker``, the engine's data root) has at
    least ``min_free_mb`` free (default :data:`DEFAULT_MIN_FREE_MB`)."""
    need = DEFAULT_MIN_FREE_MB if min_free_mb is None else min_free_mb
    places = [("the result store", Path(store))]
    if docker:
        root = engine_data_root()
        if root is not None:
            places.append(("the Docker Engine's data root", root))
    for what, path in places:
        free = free_mb(path)
        if free < need:
            raise LowDisk(f"only {free:.0f} MB free under {path} ({what}); {before} needs {need:.0f} MB free "
                          f"(--min-free-mb): free some space and run the same command again")
