"""``subprocess``: the method runs as a separate local process speaking exactly
the wire protocol a container speaks (the embedded default: no Docker needed).

It isolates crashes and hangs (per-call deadline, process-group kill) but is no
sandbox: use the ``docker`` runner for untrusted code.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
from typing import Optional

from harness.methods import REPO_ROOT
from harness.runners.socket_client import SocketClient


class SubprocessClient(SocketClient):
    runner = "subprocess"
    _proc: Optional[subprocess.Popen] = None

    def _launch(self) -> None:
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "PYTHONPATH": str(REPO_ROOT),
            "HOME": str(self.exchange),
            **self.method_env(),
            "PYTHONDONTWRITEBYTECODE": "1",
            "PYTHONUNBUFFERED": "1",
        }
        log = open(self.log_path, "ab")
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "specs.sdk", "--method-dir", str(self.source.path),
                 "--exchange", str(self.exchange)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env, cwd=str(self.source.path),
                start_new_session=True)
        finally:
            log.close()

    def peak_memory_mb(self) -> Optional[float]:
        try:
            status = open(f"/proc/{self._proc.pid}/status").read()
        except (OSError, AttributeError):
            return None
        for line in status.splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return None

    def _exit_status(self) -> Optional[str]:
        if self._proc is None:
            return "not started"
        code = self._reap()
        if code is None:
            return None
        return f"killed by signal {-code}" if code < 0 else f"exit code {code}"

    def _reap(self) -> Optional[int]:
        """The method's exit code once it ended (None while it runs). Before its exit is collected, what is
        left of its process group (children it started: multiprocessing workers, a pool) is killed: the
        ended process still holds the group's id then, so no other process can have taken it."""
        if self._proc.returncode is not None:
            return self._proc.returncode
        try:
            ended = os.waitid(os.P_PID, self._proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except (ChildProcessError, AttributeError):  # (collected elsewhere; no waitid)
            return self._proc.poll()
        if ended is None:
            return None
        try:
            os.killpg(self._proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        return self._proc.poll()

    def _wait_exit(self, timeout: float) -> None:
        """Until the process exits (a pidfd that becomes readable then: no polling, no sleeps; Popen's own
        ``wait(timeout)`` sleeps in a loop), at most ``timeout`` seconds. ``poll()``, not ``select()``: the
        harness may hold more than 1024 descriptors (``select`` refuses those)."""
        if self._proc is None or self._reap() is not None:
            return
        try:
            fd = os.pidfd_open(self._proc.pid)
        except (AttributeError, OSError):  # no pidfd (not Linux >= 5.3)
            try:
                self._proc.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
            return
        try:
            waiter = select.poll()
            waiter.register(fd, select.POLLIN)
            waiter.poll(max(0, int(timeout * 1000)))
        finally:
            os.close(fd)
        self._reap()

    def _kill(self) -> None:
        if self._proc is not None and self._reap() is None:
            try:
                os.killpg(self._proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self._proc.wait()
