"""Stopping on SIGTERM (a kill, a queue's cancel, the web server stopping, a sweep stopping its workers).

The process unwinds: method processes, containers and their exchange folders are closed and removed, and
a run in flight leaves no record (it runs again next time). :func:`install` makes the first SIGTERM raise
``SystemExit(143)`` wherever the process is; later ones only confirm it, so that no second signal cuts
short what the first one's unwinding is doing (closing a method, a pool's exit joining its workers, which
Python's own pool signals once more).

Library code that catches everything can swallow that ``SystemExit``: Torch-Pruning imports timm and
traces models under bare ``except:``. :func:`check` raises it again; the harness calls it where a run
starts, at every prune round and every training step, and before a sweep starts its workers.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from typing import Optional

_signal: Optional[int] = None


def install() -> None:
    """SIGTERM stops this process (see the module docstring). Main thread only."""
    signal.signal(signal.SIGTERM, _stop)


def _stop(signum: int, frame) -> None:
    global _signal
    if _signal is not None:  # the process is already stopping
        return
    _signal = signum
    sys.exit(128 + signum)


def requested() -> bool:
    return _signal is not None


def check() -> None:
    """Raise the stop again if one was requested (its first ``SystemExit`` may have been swallowed)."""
    if _signal is not None:
        raise SystemExit(128 + _signal)


def die_with(parent: int, group: bool = False) -> None:
    """SIGTERM this process (``group``: its whole process group) once ``parent`` is gone (killed with
    SIGKILL, say): a worker never outlives what started it (checked every second, on a thread)."""
    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        if group:
            os.killpg(os.getpgid(0), signal.SIGTERM)
        else:
            os.kill(os.getpid(), signal.SIGTERM)
    threading.Thread(target=watch, daemon=True, name="parent-watch").start()


def process_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists on this host (another user's counts: it cannot be signalled; so does a
    number that is no pid, which names nothing this host's processes made)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True
    return True
