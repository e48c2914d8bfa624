"""Stopping on SIGTERM (:mod:`harness.stopping`), in processes of their own (signal handlers are per process):
the first SIGTERM stops the process even where library code swallows the ``SystemExit`` it raises, and no
later SIGTERM cuts short the unwinding of the first. About 10 s. (Whole sweeps stopped: tests/test_spares.py.)"""

from __future__ import annotations

import subprocess
import sys

import pytest

SWALLOWED = """
import os, signal
from harness import stopping
stopping.install()
try:  # Torch-Pruning imports timm and traces models under bare excepts
    os.kill(os.getpid(), signal.SIGTERM)
except:  # noqa: E722
    print("swallowed", flush=True)
print("going on", flush=True)
stopping.check()  # where a run starts, a prune round, a training step
print("never", flush=True)
"""

TWICE = """
import os, signal
from harness import stopping
stopping.install()
try:
    os.kill(os.getpid(), signal.SIGTERM)
finally:  # the unwinding: closing a method, a pool joining its workers (which signals them once more)
    os.kill(os.getpid(), signal.SIGTERM)
    print("cleanup finished", flush=True)
"""


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)


def test_a_stop_that_library_code_swallowed_takes_effect_at_the_next_check():
    res = _run(SWALLOWED)
    assert res.returncode == 143 and res.stdout.split() == ["swallowed", "going", "on"], res
    assert "Traceback" not in res.stderr


def test_a_second_sigterm_does_not_cut_short_the_unwinding_of_the_first():
    res = _run(TWICE)
    assert res.returncode == 143 and "cleanup finished" in res.stdout, res
    assert "Traceback" not in res.stderr


@pytest.mark.parametrize("module", ["harness.protocol.pruning", "harness.protocol.grouping", "harness.models.merging"])
def test_timm_is_imported_before_torch_pruning_imports_it_under_a_bare_except(module):
    """(review) A SIGTERM while Torch-Pruning imported timm was swallowed there, and its MACs counter then left
    out timm's attention for the rest of the process (a tiny ViT: 91.0M MACs instead of 92.5M)."""
    res = _run(f"""
import sys
seen = []
class Spy:
    def find_spec(self, name, path=None, target=None):
        if name in ("timm", "torch_pruning.utils.op_counter") and name not in seen:
            seen.append(name)
sys.meta_path.insert(0, Spy())
import {module}
from torch_pruning.utils import op_counter
print(seen, op_counter.has_timm)
""")
    assert res.stdout.strip() == "['timm', 'torch_pruning.utils.op_counter'] True", res
