"""The wire protocol, harness side, shared by the ``subprocess`` and ``docker`` runners.

The harness creates a private exchange directory and listens on
``<exchange>/pbench.sock``; the runner launches the method (a local process or
a container with only the exchange directory mounted), which connects and
answers. Tensors from the harness are safetensors files in the exchange
directory. Tensors from the method come back on the socket right after its reply
(``inline_reply``: methods whose dialect, :func:`specs.version.dialect_of` their manifest's
``spec_version``, has ``replies="inline"``: spec 1.3 on) or as files it writes into the exchange directory
(older methods).

Defences: a deadline on start-up, on every call and on the whole run; replies
validated by the spec models; no reply may exceed its expected size (plus
slack) nor the write limit (``limits.max_write_mb``), checked *before* it is
read; reply files must be regular files (no symlinks), opened with O_NOFOLLOW;
a method that leaves more than the write limit in a writable exchange directory
is killed at its next message.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import select
import shutil
import socket
import stat
import tempfile
import time
from abc import abstractmethod
from pathlib import Path
from typing import Optional

import torch
from pydantic import ValidationError
from safetensors import SafetensorError
from safetensors.torch import load as load_bytes
from safetensors.torch import save as safetensors_bytes
from safetensors.torch import save_file

import harness
from harness.errors import MethodFailure
from harness.stopping import process_alive
from harness.runners.base import MethodClient, RegGrads, RegularizerLink, Tensors, validate_reg
from specs import wire
from specs.base import explain, one_line
from specs.messages import (ErrorReply, Group, Hello, HelloReply, InlineTensors, RegularizeReply, RegularizeRequest,
                            ReplyTensors, ScoreReply, ScoreRequest, Shutdown, TensorFile, method_message)
from specs.wire import SOCKET_NAME

START_TIMEOUT_S = 120.0
#: how long a method may take to exit after the shutdown message before it is killed
SHUTDOWN_TIMEOUT_S = 5.0
#: a reply may exceed the size we expect by this much (safetensors header, alignment)
REPLY_SLACK_BYTES = 1 << 20
#: where the limits on writes are set, for error messages
WRITE_LIMIT_HINT = "raise it with --max-write-mb or the track's sandbox.max_write_mb"


#: glibc malloc in a method's process: blocks below 32 MB come from its heap, which keeps up to 256 MB it freed.
#: A method's temporaries are about the size of the weights it reads every request; by default glibc hands
#: them back to the kernel after each request and the next one faults them in again, zeroed (4,000-18,000
#: page faults per score request of ResNet-18, a third of the round trip): with these, a median of about 75
#: (benchmarks/prune_vs_torch_pruning.py measures the round trip; images without glibc ignore them)
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": str(32 * 2**20), "MALLOC_TRIM_THRESHOLD_": str(256 * 2**20)}


class SocketClient(MethodClient):
    """Speaks the wire protocol over a Unix socket in the exchange directory."""

    def __init__(self, *args, start_timeout: float = START_TIMEOUT_S, log_path: Optional[Path] = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.start_timeout = start_timeout
        #: the method answers on the socket (spec 1.3) and never needs to write the exchange directory
        self.inline = self.dialect.replies == "inline"
        self.exchange = Path(tempfile.mkdtemp(prefix=f"pbx-{_maker()}-", dir=self._exchange_root()))
        os.chmod(self.exchange, 0o755 if self.inline else 0o777)  # a container's own user reads (and writes)
        #: where the harness writes tensors before renaming them into the exchange directory: its own (0700),
        #: on the same filesystem, out of the method's reach
        self._staging = Path(tempfile.mkdtemp(prefix=f"pbx-own-{_maker()}-", dir=self._exchange_root()))
        self._own_log = log_path is None
        self.log_path = log_path or self.exchange.with_name(self.exchange.name + ".log")
        self._listener: Optional[socket.socket] = None
        self._conn: Optional[socket.socket] = None
        self._counter = 0
        self._deadline: Optional[float] = None  # of the call in progress (inline tensors follow its reply)
        self._own: set[str] = {SOCKET_NAME}  # what the harness put into the exchange directory (own_file)

    def method_env(self) -> dict[str, str]:
        """What every runner sets in the method's environment: its threads (the CPUs its manifest declares)
        and glibc's malloc settings (:data:`MALLOC_ENV`)."""
        threads = str(max(1, int(self.manifest.resources.cpus)))
        return {"PBENCH_THREADS": threads, "OMP_NUM_THREADS": threads, **MALLOC_ENV}

    @classmethod
    def remove_stale(cls) -> int:
        """Remove what clients in processes killed outright (a sweep worker killed by the out-of-memory killer,
        a CLI killed with SIGKILL) could not: their exchange and staging folders and logs, named by the pid of
        the process that made them (and a tag of its host: a temporary folder may be shared), gone now (a pid in
        use again is left alone). Their method processes end by themselves: the SDK exits when the harness's end
        of the socket closes. Returns how many were removed."""
        removed, host = 0, _host_tag()
        for root in cls._exchange_roots():
            for path in root.glob("pbx-*"):
                match = _OWNED.match(path.name)
                if match and match.group(2) == host and not process_alive(int(match.group(1))):
                    shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
                    removed += 1
        return removed

    @classmethod
    def _exchange_roots(cls) -> list[Path]:
        """Every folder :meth:`_exchange_root` may be."""
        return [Path(tempfile.gettempdir())]

    # -- what a runner provides ------------------------------------------------------------------
    def _exchange_root(self) -> Optional[str]:
        """Where the exchange directory is created (None: the system's temporary directory)."""
        return None

    @abstractmethod
    def _launch(self) -> None:
        """Start the method so that it connects to ``self.exchange / SOCKET_NAME``."""

    @abstractmethod
    def _exit_status(self) -> Optional[str]:
        """None while the method runs; else a short description of how it ended."""

    @abstractmethod
    def _kill(self) -> None: ...

    def _wait_exit(self, timeout: float) -> None:
        """Return as soon as the method has ended, or after ``timeout`` seconds (then it is killed).
        Runners wait on the process itself; this fallback polls :meth:`_exit_status`."""
        deadline = time.monotonic() + timeout
        while self._exit_status() is None and time.monotonic() < deadline:
            time.sleep(0.05)

    # -- protocol --------------------------------------------------------------------------------
    def prelaunch(self) -> None:
        """Listen, and launch the method: it connects and waits for its handshake. The first half of
        :meth:`start`, which a spare (:mod:`harness.runners.spares`) does ahead of the run that takes it."""
        if self._listener is not None:
            return
        path = self.exchange / SOCKET_NAME
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(str(path))
        os.chmod(path, 0o777)
        self._listener.listen(1)
        self._launch()

    def launch_key(self) -> tuple:
        """Everything the launched process depends on: the runner, the method's folder and manifest, the
        device, the organizers' caps, where its log goes (and a runner's own options, :meth:`_launch_options`).
        The seed, hyperparameters and deadlines are not in it: they travel in the handshake and the requests."""
        log = None if self._own_log else str(self.log_path)
        return (type(self), str(self.source.path), self.manifest.model_dump_json(), self.device, self.limits,
                self.start_timeout, log, *self._launch_options())

    def _launch_options(self) -> tuple:
        return ()

    def launched(self) -> bool:
        """Whether the process has been launched and is still running (it may not have connected yet)."""
        return self._listener is not None and self._exit_status() is None

    def connected(self, timeout: float) -> bool:
        """Whether a launched method has connected (its start is done), waiting up to ``timeout`` seconds."""
        if self._conn is not None:
            return True
        if self._listener is None:
            return False
        waiter = select.poll()
        waiter.register(self._listener, select.POLLIN)
        return bool(waiter.poll(max(0, int(timeout * 1000))))

    def start(self) -> None:
        self.prelaunch()
        deadline = time.monotonic() + self.start_timeout
        self._listener.settimeout(0.2)
        while self._conn is None:
            try:
                self._conn, _ = self._listener.accept()
            except socket.timeout:
                if self.closing:  # closed while starting on a thread (begin)
                    raise MethodFailure("closed before the method connected") from None
                status = self._exit_status()
                if status is not None:
                    self._enforce_write_limit("start-up", status)
                    raise MethodFailure(f"method exited before connecting ({status}){self._log_tail()}")
                if time.monotonic() > deadline:
                    raise MethodFailure(f"method did not connect within {self.start_timeout:.0f} s")
        reply = self.request(Hello(harness_version=harness.__version__, seed=self.seed, device=self.device,
                                 hyperparameters=self.hyperparameters), HelloReply, self.start_timeout, "hello")
        self._check_manifest(reply.manifest)

    def request(self, msg, expect: type, timeout: float, what: str):
        """Send ``msg`` and return the method's validated reply, an ``expect`` (a MethodFailure with a one-line
        reason otherwise: the deadline, a crash, an invalid or unexpected reply, the write limit)."""
        by_run = False
        if self.run_deadline is not None:
            left = self.run_deadline - time.monotonic()
            if left <= 0:
                self._kill()
                raise MethodFailure(f"method exceeded its run deadline before {what!r} (killed)")
            by_run, timeout = left < timeout, min(timeout, left)
        self._deadline = time.monotonic() + timeout
        try:
            wire.send(self._conn, msg.model_dump(mode="json"))
            payload = wire.recv(self._conn, timeout=timeout)
        except wire.WireTimeout:
            self._kill()
            self._enforce_write_limit(what, "killed at its deadline")
            if by_run:
                raise MethodFailure(f"method exceeded its run deadline of {self.run_timeout:.0f} s "
                                    f"during {what!r} (killed)") from None
            raise MethodFailure(f"method did not answer {what!r} within {timeout:.0f} s (killed)") from None
        except (wire.WireError, OSError) as e:
            self._wait_exit(0.2)  # let a crashing process finish so that its exit status is known
            status = self._exit_status()
            self._enforce_write_limit(what, status)
            how = f"method process ended ({status})" if status else f"protocol error: {e}"
            raise MethodFailure(f"{how} during {what!r}{self._log_tail()}") from None
        self._enforce_write_limit(what)
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

    # -- the write limit ---------------------------------------------------------------------------
    def _method_bytes(self) -> int:
        """Bytes the method holds in the exchange directory (everything the harness did not put there;
        iterative and without following links: a hostile tree cannot recurse the harness to death)."""
        total, stack = 0, [(self.exchange, True)]
        while stack:
            directory, top = stack.pop()
            try:
                entries = list(os.scandir(directory))
            except OSError:
                continue
            for entry in entries:
                if top and entry.name in self._own:
                    continue
                try:
                    total += entry.stat(follow_symlinks=False).st_blocks * 512
                    if entry.is_dir(follow_symlinks=False):
                        stack.append((entry.path, False))
                except OSError:
                    pass
        return total

    def _enforce_write_limit(self, what: str, status: Optional[str] = None) -> None:
        """A method that may write its exchange directory (spec < 1.3) and holds more than the write
        limit there is killed: checked at every message and whenever it fails (the kernel bounds it in
        between: the directory is a tmpfs charged to its memory limit under docker)."""
        if self.inline:
            return
        used = self._method_bytes()
        if used > self.limits.write_bytes:
            self._kill()
            ended = f", {status}" if status else ", killed"
            raise MethodFailure(f"method wrote more than {self.limits.max_write_mb} MB into its exchange directory "
                                f"({used / 2**20:.0f} MB by {what!r}{ended}; {WRITE_LIMIT_HINT})")

    # -- tensors -----------------------------------------------------------------------------------
    def _write(self, stem: str, tensors: Tensors) -> TensorFile:
        self._counter += 1
        name = f"{stem}-{self._counter:05d}.safetensors"
        self._own.add(name)
        tensors = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
        # written by safetensors (2.5x faster than its bytes and a write) in the harness's own directory, made
        # readable by the container's user there, then renamed into the exchange directory: a link, FIFO or
        # file the method planted under that name is replaced, never followed or opened
        staged = self._staging / name
        try:
            save_file(tensors, str(staged))
            os.chmod(staged, 0o644)
            os.rename(staged, self.exchange / name)
        except (OSError, SafetensorError) as e:
            staged.unlink(missing_ok=True)
            raise MethodFailure(f"cannot put {name!r} into the exchange directory ({one_line(e)}; a method that "
                                f"writes there may have planted something under that name)") from None
        return TensorFile(file=name, keys=sorted(tensors))

    def _discard(self, name: str) -> None:
        (self.exchange / name).unlink(missing_ok=True)
        self.release_file(name)

    def own_file(self, name: str) -> None:
        """``name`` in the exchange directory is the harness's: not counted against the method's writes."""
        self._own.add(name)

    def release_file(self, name: str) -> None:
        """``name`` (removed) is no longer the harness's."""
        self._own.discard(name)

    def read_tensors(self, ref: ReplyTensors, max_bytes: int, what: str) -> Tensors:
        """The tensors of a reply, read from the socket (inline) or from its file; at most ``max_bytes``
        (the reply's expected size plus slack), and never more than the write limit."""
        if isinstance(ref, InlineTensors) != self.inline:
            sent, asked = ("in a file", "inline on the socket") if self.inline else ("inline", "in a file")
            raise MethodFailure(f"reply to {what!r} sent its tensors {sent}, expected {asked}")
        if isinstance(ref, InlineTensors):
            data, name = self._recv_inline(max_bytes, what), f"inline reply to {what!r}"
        else:
            data, name = self._read_file(ref, max_bytes), f"reply file {ref.file!r}"
        try:
            return load_bytes(data)
        except (SafetensorError, ValueError, RuntimeError) as e:
            raise MethodFailure(f"{name} is not a valid safetensors file ({one_line(e)})") from None

    def _recv_inline(self, max_bytes: int, what: str) -> bytes:
        write_limit = self.limits.write_bytes
        try:
            return wire.recv_blob(self._conn, timeout=max(0.0, self._deadline - time.monotonic()),
                                  max_bytes=min(max_bytes, write_limit))
        except wire.FrameTooLarge as e:
            self._kill()
            if e.size > write_limit:
                raise MethodFailure(f"method wrote more than {self.limits.max_write_mb} MB: a reply of "
                                    f"{e.size / 2**20:.0f} MB to {what!r} (killed; {WRITE_LIMIT_HINT})") from None
            raise MethodFailure(f"inline reply to {what!r} has {e.size} bytes, more than the {max_bytes} allowed "
                                f"(killed)") from None
        except wire.WireTimeout:
            self._kill()
            raise MethodFailure(f"method did not finish its reply to {what!r} in time (killed)") from None
        except wire.WireError as e:
            raise MethodFailure(f"protocol error during {what!r}: {e}{self._log_tail()}") from None

    def _read_file(self, ref: TensorFile, max_bytes: int) -> bytes:
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
                return f.read(max_bytes + 1)
        finally:
            os.close(fd)
            path.unlink(missing_ok=True)

    # -- requests ----------------------------------------------------------------------------------
    def _score(self, round: int, groups: list[Group], observations: dict[str, Tensors]) -> object:
        refs = {kind: self._write(f"obs-{kind}", tensors) for kind, tensors in observations.items()}
        reply_file = f"scores-{round:03d}.safetensors"
        try:
            reply = self.request(ScoreRequest(round=round, groups=groups, observations=refs, reply_file=reply_file,
                                            inline_reply=self.inline), ScoreReply, self.call_timeout, "score")
        finally:
            for ref in refs.values():
                self._discard(ref.file)
        expected = sum(g.n_channels for g in groups) * 8 + 256 * len(groups)
        return self.read_tensors(reply.scores, expected + REPLY_SLACK_BYTES, "score")

    def _regularize(self, step: int, total_steps: int, groups: list[Group], weights: Tensors) -> object:
        ref = self._write("weights", weights)
        try:
            reply = self.request(RegularizeRequest(step=step, total_steps=total_steps, groups=groups, weights=ref,
                                                 reply_file=f"reg-{step:06d}.safetensors", inline_reply=self.inline),
                               RegularizeReply, self.call_timeout, "regularize")
        finally:
            self._discard(ref.file)
        return self.read_tensors(reply.grads, dense_reply_bytes(weights), "regularize")

    def close(self) -> None:
        if self._starting is not None:  # never waited for (the harness failed first): stop it now
            self.closing = True
            self._kill()  # a start waiting for the method's handshake returns at once
            self._abandon_start()
        try:
            try:
                if self._conn is not None:  # (a method that never shook hands, a spare, is killed at once)
                    try:
                        wire.send(self._conn, Shutdown().model_dump(mode="json"))
                    except OSError:
                        pass
                    self._wait_exit(SHUTDOWN_TIMEOUT_S)
            finally:  # (whatever the wait raised, a stop say: the process never outlives its client)
                self._kill()
        finally:  # (nor its folders)
            for s in (self._conn, self._listener):
                if s is not None:
                    s.close()
            self._conn = self._listener = None
            shutil.rmtree(self.exchange, ignore_errors=True)
            shutil.rmtree(self._staging, ignore_errors=True)
            if self._own_log:
                self.log_path.unlink(missing_ok=True)


#: the exchange (``pbx-<pid>-<host tag>-``) and staging (``pbx-own-<pid>-<host tag>-``) folders, and exchange logs,
#: of process ``pid`` on the host of that tag
_OWNED = re.compile(r"pbx-(?:own-)?([0-9]+)-([0-9a-f]{8})-")


def _maker() -> str:
    """``<pid>-<host tag>``: who makes an exchange folder."""
    return f"{os.getpid()}-{_host_tag()}"


def _host_tag() -> str:
    """This host's name, hashed short (a Unix socket's path is at most 107 bytes)."""
    return hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]


def dense_reply_bytes(weights: Tensors) -> int:
    """The most a dense gradient of ``weights`` takes as safetensors (float64 at worst), plus slack."""
    return sum(t.numel() * 8 + 256 for t in weights.values()) + REPLY_SLACK_BYTES


# --------------------------------------------------------------------------- sparse training, "compact" (spec 1.1)

WEIGHTS_FILE = "reg-weights.safetensors"
GRADS_FILE = "reg-grads.safetensors"
SCALES_FILE = "reg-scales.safetensors"


class SocketLink(RegularizerLink):
    """The ``"compact"`` regularizer dialect (spec 1.1) over the socket, every step of sparse training:

    - only group members' parameters travel, always to the same file, rewritten in place
      (:class:`_InPlaceFile`: created once, never reopened by name);
    - the groups are described once (step 0); later requests set ``same_groups``;
    - the method may answer with per-channel scales (``RegularizeReply.scales``): a few kilobytes
      that the harness expands in-process instead of a second copy of the model.
    """

    client: SocketClient

    def __init__(self, client: SocketClient, groups: list[Group]):
        super().__init__(client, groups)
        self.weights_file = _InPlaceFile(client.exchange, WEIGHTS_FILE)
        client.own_file(WEIGHTS_FILE)
        self.sent_groups = False

    def __call__(self, step: int, total_steps: int, weights: Tensors) -> RegGrads:
        client = self.client
        client.ready()  # a client begun on a thread (begin) has connected and shaken hands
        self.weights_file.write(weights)
        request = RegularizeRequest(
            step=step, total_steps=total_steps, groups=[] if self.sent_groups else self.groups,
            same_groups=self.sent_groups, weights=TensorFile(file=WEIGHTS_FILE, keys=self.weights_file.keys),
            reply_file=GRADS_FILE, scales_file=SCALES_FILE, inline_reply=client.inline)
        reply = client.request(request, RegularizeReply, client.call_timeout, "regularize")
        self.sent_groups = True
        for ref, name in ((reply.grads, GRADS_FILE), (reply.scales, SCALES_FILE)):
            if isinstance(ref, TensorFile) and ref.file != name:
                raise MethodFailure(f"regularizer replied in {ref.file!r}, expected {name!r}")
        scale_bytes = sum(sum(t.shape) * 8 + 512 for t in weights.values()) + REPLY_SLACK_BYTES
        dense = client.read_tensors(reply.grads, dense_reply_bytes(weights), "regularize")
        scales = client.read_tensors(reply.scales, scale_bytes, "regularize") if reply.scales else {}
        return validate_reg(weights, dense, scales)

    def close(self) -> None:
        self.weights_file.close()
        self.client.release_file(WEIGHTS_FILE)


#: the link class of each regularizer dialect (set here: the compact link is defined after the client)
SocketClient.links = {**MethodClient.links, "compact": SocketLink}


class _InPlaceFile:
    """A safetensors file written once and then rewritten in place, step after step.

    Created with ``O_EXCL | O_NOFOLLOW`` under a fresh name and renamed into place; the
    harness keeps the descriptor and never opens the path again, so a method that swaps
    the path for a symlink cannot make the harness write anywhere else. ``pwrite``
    (not a shared mapping) so that a method truncating the file cannot crash the harness.
    """

    def __init__(self, directory: Path, name: str):
        self.directory, self.name = directory, name
        self.fd: Optional[int] = None
        self.layout: Optional[list] = None
        self.offsets: list[tuple[str, int]] = []
        self.keys: list[str] = []

    def write(self, tensors: Tensors) -> None:
        tensors = {k: t.detach().to("cpu", torch.float32).contiguous() for k, t in tensors.items()}
        layout = sorted((k, tuple(t.shape)) for k, t in tensors.items())
        if self.fd is None or layout != self.layout:
            self._create(tensors, layout)
            return
        for key, offset in self.offsets:
            view = memoryview(tensors[key].numpy()).cast("B")
            while view:
                n = os.pwrite(self.fd, view, offset)
                view, offset = view[n:], offset + n

    def _create(self, tensors: Tensors, layout: list) -> None:
        self.close()
        data = safetensors_bytes(tensors)
        header_len = int.from_bytes(data[:8], "little")
        header = json.loads(data[8:8 + header_len])
        base = 8 + header_len
        self.offsets = [(k, base + int(v["data_offsets"][0])) for k, v in header.items() if k != "__metadata__"]
        tmp = self.directory / f".{self.name}.{os.getpid()}.{time.monotonic_ns()}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.replace(tmp, self.directory / self.name)
        except BaseException:
            os.close(fd)
            Path(tmp).unlink(missing_ok=True)
            raise
        self.fd, self.layout, self.keys = fd, layout, sorted(tensors)

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
            (self.directory / self.name).unlink(missing_ok=True)
