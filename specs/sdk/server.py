"""The method-side server: load a method folder, connect to the harness's socket in the exchange
directory, answer its messages (:mod:`specs.messages`), read tensors from safetensors files there and
send replies' tensors back as files or, when a request sets ``inline_reply`` (spec 1.3), as
safetensors blobs on the socket after the reply (the exchange directory may then be read-only).

Started as ``python -m specs.sdk --method-dir DIR --exchange EXCHANGE_DIR`` (the method image's
entrypoint).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import select
import signal
import socket
import sys
import threading
import traceback
from pathlib import Path
from typing import Optional

import torch
from pydantic import ValidationError
from safetensors.torch import load_file, save, save_file

from specs import wire
from specs.base import explain, one_line
from specs.manifest import MethodLoadError, MethodManifest, load_manifest
from specs.messages import (ErrorReply, Group, Hello, HelloReply, InlineTensors, RegularizeReply, RegularizeRequest,
                            ReplyTensors, ScoreReply, ScoreRequest, Shutdown, TensorFile, harness_message)
from specs.sdk.methods import ImportanceMethod, MethodBase, Observations, RegularizerMethod
from specs.tensors import seed_everything, split_compact
from specs.wire import SOCKET_NAME

# --------------------------------------------------------------------------- loading


def load_method_class(method_dir: Path, manifest: MethodManifest) -> type:
    module_name, _, class_name = manifest.entrypoint.partition(":")
    path = Path(method_dir) / f"{module_name}.py"
    if not path.is_file():
        raise MethodLoadError(f"{path}: entrypoint module not found")
    spec = importlib.util.spec_from_file_location(f"pbench_method_{manifest.id}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    cls = getattr(module, class_name, None)
    if cls is None:
        raise MethodLoadError(f"{path}: no class {class_name!r}")
    if "importance" in manifest.provides and not issubclass(cls, ImportanceMethod):
        raise MethodLoadError(f"{class_name} must subclass specs.sdk.ImportanceMethod (manifest provides importance)")
    if "regularizer" in manifest.provides and not issubclass(cls, RegularizerMethod):
        raise MethodLoadError(f"{class_name} must subclass specs.sdk.RegularizerMethod (manifest provides regularizer)")
    return cls


def instantiate(method_dir: Path, hello: Hello) -> MethodBase:
    manifest = load_manifest(method_dir)
    cls = load_method_class(method_dir, manifest)
    seed_everything(hello.seed)
    return cls(manifest, hello.hyperparameters, hello.seed, hello.device)


# --------------------------------------------------------------------------- server


def _load(exchange: Path, ref: TensorFile) -> dict[str, torch.Tensor]:
    return load_file(str(exchange / ref.file))


def _save(exchange: Path, name: str, tensors: dict[str, torch.Tensor]) -> TensorFile:
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    tmp = exchange / f".{name}.tmp"
    save_file(tensors, str(tmp))
    os.replace(tmp, exchange / name)
    return TensorFile(file=name, keys=sorted(tensors))


class _Reply:
    """Where one reply's tensors go: files in the exchange directory, or (``inline``) blobs that
    :func:`serve` sends on the socket right after the reply message, in the order they were put."""

    def __init__(self, exchange: Path, inline: bool):
        self.exchange, self.inline = exchange, inline
        self.blobs: list[bytes] = []

    def put(self, name: str, tensors: dict[str, torch.Tensor]) -> ReplyTensors:
        if not self.inline:
            return _save(self.exchange, name, tensors)
        tensors = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
        self.blobs.append(save(tensors))
        return InlineTensors(keys=sorted(tensors))


def _request_groups(method: MethodBase, msg: RegularizeRequest) -> list[Group]:
    """The request's groups; spec 1.1 sends them once (``same_groups`` afterwards)."""
    if msg.same_groups:
        cached = getattr(method, "_sdk_reg_groups", None)
        if cached is None:
            raise ValueError("same_groups is set but no earlier request carried the groups")
        return cached
    method._sdk_reg_groups = msg.groups
    return msg.groups


def handle(method: MethodBase, msg, exchange: Path) -> tuple[object, list[bytes]]:
    """Answer one request: ``(reply, blobs to send after it)``. Exceptions become an ErrorReply."""
    reply = _Reply(exchange, bool(getattr(msg, "inline_reply", False)))
    try:
        answer = _answer(method, msg, exchange, reply)
    except Exception as e:  # the harness records the one-line reason
        traceback.print_exc(file=sys.stderr)
        answer = ErrorReply(message=one_line(e))
    return answer, [] if isinstance(answer, ErrorReply) else reply.blobs


def _answer(method: MethodBase, msg, exchange: Path, reply: _Reply):
    if isinstance(msg, ScoreRequest):
        if not isinstance(method, ImportanceMethod):
            return ErrorReply(message="this method provides no importance scores")
        obs = Observations({kind: _load(exchange, ref) for kind, ref in msg.observations.items()})
        with torch.no_grad():
            scores = method.score(msg.groups, obs)
        if not isinstance(scores, dict):
            return ErrorReply(message=f"score() returned {type(scores).__name__}, expected dict[group id, tensor]")
        scores = {k: torch.as_tensor(v, dtype=torch.float32) for k, v in scores.items()}
        return ScoreReply(scores=reply.put(msg.reply_file, scores))
    if isinstance(msg, RegularizeRequest):
        if not isinstance(method, RegularizerMethod):
            return ErrorReply(message="this method provides no regularizer")
        groups = _request_groups(method, msg)
        weights = _load(exchange, msg.weights)
        if msg.scales_file:  # spec 1.1: the harness takes compact scales
            out = method.regularize_compact(msg.step, msg.total_steps, groups, weights)
            if not isinstance(out, dict):
                return ErrorReply(message=f"regularize_compact() returned {type(out).__name__}, expected dict")
            dense, scales = split_compact(out)
            return RegularizeReply(grads=reply.put(msg.reply_file, dense), scales=reply.put(msg.scales_file, scales))
        grads = method.regularize(msg.step, msg.total_steps, groups, weights)
        if not isinstance(grads, dict):
            return ErrorReply(message=f"regularize() returned {type(grads).__name__}, expected dict")
        return RegularizeReply(grads=reply.put(msg.reply_file, grads))
    return ErrorReply(message=f"unexpected message {getattr(msg, 'type', '?')!r}")


def _exit_on_hang_up(sock: socket.socket) -> None:
    """End the process as soon as the harness's end of the socket closes, even in the middle of a call: a
    harness killed outright (the out-of-memory killer) never sends its shutdown, and the method would
    otherwise compute on, for as long as its call timeout, in a process or container nobody waits for. The
    processes it started go too when it leads its process group (as the runners start it)."""
    watcher = select.poll()
    watcher.register(sock, getattr(select, "POLLRDHUP", 0))  # (POLLHUP and POLLERR are always reported)
    while not watcher.poll():
        pass
    print("the harness closed its end of the socket: exiting", file=sys.stderr)
    sys.stderr.flush()
    sys.stdout.flush()
    if os.getpgid(0) == os.getpid():
        os.killpg(0, signal.SIGKILL)
    os._exit(0)


def serve(method_dir: Path, exchange: Path) -> int:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(str(exchange / SOCKET_NAME))
    threading.Thread(target=_exit_on_hang_up, args=(sock,), daemon=True, name="pbench-hang-up").start()
    hello = harness_message.validate_python(wire.recv(sock))
    if not isinstance(hello, Hello):
        return 2
    try:
        method = instantiate(method_dir, hello)
    except Exception as e:
        wire.send(sock, ErrorReply(message=one_line(e)).model_dump(mode="json"))
        return 1
    wire.send(sock, HelloReply(manifest=method.manifest).model_dump(mode="json"))
    while True:
        try:
            payload = wire.recv(sock)
        except wire.WireError:
            return 0  # harness went away: nothing left to do
        try:
            msg = harness_message.validate_python(payload)
        except ValidationError as e:
            wire.send(sock, ErrorReply(message=f"invalid request: {explain(e)}").model_dump(mode="json"))
            continue
        if isinstance(msg, Shutdown):
            return 0
        reply, blobs = handle(method, msg, exchange)
        wire.send(sock, reply.model_dump(mode="json"))
        for blob in blobs:
            wire.send_blob(sock, blob)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m specs.sdk", description="serve a PruningBench method")
    parser.add_argument("--method-dir", type=Path, default=Path(os.environ.get("PBENCH_METHOD_DIR", "/method")))
    parser.add_argument("--exchange", type=Path, default=Path(os.environ.get("PBENCH_EXCHANGE", "/exchange")))
    parser.add_argument("--threads", type=int, default=int(os.environ.get("PBENCH_THREADS", "1")))
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, args.threads))
    # Method code may print; keep stdout for humans and never mix it with the protocol (it uses the socket).
    return serve(args.method_dir, args.exchange)
