"""The wire protocol, harness side, shared by the ``subprocess`` and ``docker`` runners.

The harness creates a private exchange directory and listens on
``<exchange>/pbench.sock``; the runner launches the method (a local process or
a container with only the exchange directory mounted), which connects and
answers. Tensors travel as safetensors files in the exchange directory.

Defences: a deadline on start-up and on every call; replies validated by the
spec models; reply files must be regular files (no symlinks), opened with
O_NOFOLLOW and size-checked before they are read.
"""

from __future__ import annotations

import os
import shutil
import socket
import stat
import tempfile
import time
from abc import abstractmethod
from pathlib import Path
from typing import Optional

from pydantic import ValidationError
from safetensors import SafetensorError
from safetensors.torch import load as load_bytes
from safetensors.torch import save_file

import harness
from harness.errors import MethodFailure
from harness.runners.base import MethodClient, Tensors
from specs import wire
from specs.base import explain
from specs.messages import (ErrorReply, Group, Hello, HelloReply, RegularizeReply, RegularizeRequest, ScoreReply,
                            ScoreRequest, Shutdown, TensorFile, method_message)
from specs.sdk import SOCKET_NAME, one_line

START_TIMEOUT_S = 120.0
#: a reply file may be at most this many times the size we expect, plus slack
REPLY_SLACK_BYTES = 1 << 20


class SocketClient(MethodClient):
    """Speaks the wire protocol over a Unix socket in the exchange directory."""

    def __init__(self, *args, start_timeout: float = START_TIMEOUT_S, log_path: Optional[Path] = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.start_timeout = start_timeout
        self.exchange = Path(tempfile.mkdtemp(prefix="pbx-"))
        os.chmod(self.exchange, 0o777)  # a container's unprivileged user writes replies here
        self._own_log = log_path is None
        self.log_path = log_path or self.exchange.with_name(self.exchange.name + ".log")
        self._listener: Optional[socket.socket] = None
        self._conn: Optional[socket.socket] = None
        self._counter = 0

    # -- what a runner provides ------------------------------------------------------------------
    @abstractmethod
    def _launch(self) -> None:
        """Start the method so that it connects to ``self.exchange / SOCKET_NAME``."""

    @abstractmethod
    def _exit_status(self) -> Optional[str]:
        """None while the method runs; else a short description of how it ended."""

    @abstractmethod
    def _kill(self) -> None: ...

    # -- protocol --------------------------------------------------------------------------------
    def start(self) -> None:
        path = self.exchange / SOCKET_NAME
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(str(path))
        os.chmod(path, 0o777)
        self._listener.listen(1)
        self._launch()
        deadline = time.monotonic() + self.start_timeout
        self._listener.settimeout(0.2)
        while self._conn is None:
            try:
                self._conn, _ = self._listener.accept()
            except socket.timeout:
                status = self._exit_status()
                if status is not None:
                    raise MethodFailure(f"method exited before connecting ({status}){self._log_tail()}")
                if time.monotonic() > deadline:
                    raise MethodFailure(f"method did not connect within {self.start_timeout:.0f} s")
        reply = self._call(Hello(harness_version=harness.__version__, seed=self.seed, device=self.device,
                                 hyperparameters=self.hyperparameters), HelloReply, self.start_timeout, "hello")
        self._check_manifest(reply.manifest)

    def _call(self, msg, expect: type, timeout: float, what: str):
        if self.run_deadline is not None:
            left = self.run_deadline - time.monotonic()
            if left <= 0:
                self._kill()
                raise MethodFailure(f"method exceeded its run deadline before {what!r} (killed)")
            timeout = min(timeout, left)
        try:
            wire.send(self._conn, msg.model_dump(mode="json"))
            payload = wire.recv(self._conn, timeout=timeout)
        except wire.WireTimeout:
            self._kill()
            raise MethodFailure(f"method did not answer {what!r} within {timeout:.0f} s (killed)") from None
        except (wire.WireError, OSError) as e:
            time.sleep(0.2)  # let a crashing process finish so that its exit status is known
            status = self._exit_status()
            how = f"method process ended ({status})" if status else f"protocol error: {e}"
            raise MethodFailure(f"{how} during {what!r}{self._log_tail()}") from None
        try:
            reply = method_message.validate_python(payload)
        except ValidationError as e:
            raise MethodFailure(f"invalid reply to {what!r}: {explain(e)}") from None
        if isinstance(reply, ErrorReply):
            raise MethodFailure(f"method error during {what!r}: {reply.message}")
        if not isinstance(reply, expect):
            raise MethodFailure(f"method replied {reply.type!r} to {what!r}")
        return reply

    def _log_tail(self) -> str:
        try:
            lines = [l for l in self.log_path.read_text(errors="replace").splitlines() if l.strip()]
        except OSError:
            return ""
        return f": {lines[-1].strip()[:300]}" if lines else ""

    def _write(self, stem: str, tensors: Tensors) -> TensorFile:
        self._counter += 1
        name = f"{stem}-{self._counter:05d}.safetensors"
        save_file({k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}, str(self.exchange / name))
        os.chmod(self.exchange / name, 0o644)
        return TensorFile(file=name, keys=sorted(tensors))

    def _read(self, ref: TensorFile, max_bytes: int) -> Tensors:
        path = self.exchange / ref.file
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError as e:
            raise MethodFailure(f"reply file {ref.file!r} cannot be opened ({e.strerror})") from None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise MethodFailure(f"reply file {ref.file!r} is not a regular file")
            if st.st_size > max_bytes:
                raise MethodFailure(f"reply file {ref.file!r} has {st.st_size} bytes, more than the {max_bytes} allowed")
            with os.fdopen(fd, "rb", closefd=False) as f:
                data = f.read(max_bytes + 1)
        finally:
            os.close(fd)
        try:
            return load_bytes(data)
        except (SafetensorError, ValueError, RuntimeError) as e:
            raise MethodFailure(f"reply file {ref.file!r} is not a valid safetensors file ({one_line(e)})") from None
        finally:
            path.unlink(missing_ok=True)

    def _score(self, round: int, groups: list[Group], observations: dict[str, Tensors]) -> object:
        refs = {kind: self._write(f"obs-{kind}", tensors) for kind, tensors in observations.items()}
        reply_file = f"scores-{round:03d}.safetensors"
        reply = self._call(ScoreRequest(round=round, groups=groups, observations=refs, reply_file=reply_file),
                           ScoreReply, self.call_timeout, "score")
        for ref in refs.values():
            (self.exchange / ref.file).unlink(missing_ok=True)
        expected = sum(g.n_channels for g in groups) * 8 + 256 * len(groups)
        return self._read(reply.scores, expected + REPLY_SLACK_BYTES)

    def _regularize(self, step: int, total_steps: int, groups: list[Group], weights: Tensors) -> object:
        ref = self._write("weights", weights)
        reply = self._call(RegularizeRequest(step=step, total_steps=total_steps, groups=groups, weights=ref,
                                             reply_file=f"reg-{step:06d}.safetensors"),
                           RegularizeReply, self.call_timeout, "regularize")
        (self.exchange / ref.file).unlink(missing_ok=True)
        expected = sum(t.numel() * 8 + 256 for t in weights.values())
        return self._read(reply.grads, expected + REPLY_SLACK_BYTES)

    def close(self) -> None:
        if self._conn is not None:
            try:
                wire.send(self._conn, Shutdown().model_dump(mode="json"))
            except OSError:
                pass
        deadline = time.monotonic() + 5
        while self._exit_status() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        self._kill()
        for s in (self._conn, self._listener):
            if s is not None:
                s.close()
        self._conn = self._listener = None
        shutil.rmtree(self.exchange, ignore_errors=True)
        if self._own_log:
            self.log_path.unlink(missing_ok=True)
