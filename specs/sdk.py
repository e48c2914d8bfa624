"""Method-side runtime: base classes for method authors and the server loop.

A method is a folder with ``manifest.json`` and a module (default ``method.py``)
defining a class (default ``Method``) that subclasses :class:`ImportanceMethod`
and/or :class:`RegularizerMethod`. The harness starts it as::

    python -m specs.sdk --method-dir DIR --exchange EXCHANGE_DIR

The server connects to ``EXCHANGE_DIR/pbench.sock``, answers the harness's
messages (see :mod:`specs.messages`) and reads/writes tensors as safetensors
files in ``EXCHANGE_DIR``. This module needs torch + safetensors; it never
imports the harness.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import random
import socket
import sys
import traceback
from pathlib import Path
from typing import Iterable, Optional

import torch
from pydantic import ValidationError
from safetensors.torch import load_file, save_file

from specs import wire
from specs.base import explain
from specs.manifest import MethodManifest
from specs.messages import (ErrorReply, Group, Hello, HelloReply, Member, RegularizeReply, RegularizeRequest,
                            ScoreReply, ScoreRequest, Shutdown, TensorFile, harness_message)

SOCKET_NAME = "pbench.sock"

# --------------------------------------------------------------------------- helpers for authors

#: the layer kinds Torch-Pruning's magnitude-style importances look at
PARAM_KINDS = ("conv", "linear", "bn", "layernorm")


def member_rows(member: Member, tensor: torch.Tensor) -> torch.Tensor:
    """Rows of a weight-shaped ``tensor`` (weight, gradient, ...) for ``member.idxs``.

    Returns ``[len(member.idxs), k]``: one row per pruned index, laid out as
    Torch-Pruning's importances do (conv/linear outputs: ``W[idxs].flatten(1)``;
    inputs: ``W.transpose(0, 1)[idxs].flatten(1)``, repeated over conv groups;
    norm layers: ``W[idxs]`` as a column).
    """
    idxs = torch.as_tensor(member.idxs, dtype=torch.long)
    if tensor.dim() == 1:
        return tensor[idxs].unsqueeze(1)
    if member.dim == "out":
        t = tensor.transpose(1, 0) if member.transposed else tensor
        return t[idxs].flatten(1)
    t = tensor.flatten(1) if member.transposed else tensor.transpose(0, 1).flatten(1)
    if member.kind == "conv" and member.conv_groups > 1 and not member.depthwise:
        t = t.repeat(member.conv_groups, 1)
    return t[idxs]


def reduce_to_root(group: Group, parts: Iterable[tuple[Member, torch.Tensor]], reduction: str = "mean") -> torch.Tensor:
    """Combine per-member scores (each ``[len(member.idxs)]``) into ``[group.n_channels]``.

    ``sum``/``mean`` accumulate by root channel (mean divides by the number of
    contributing members), ``max`` keeps the largest, ``first`` keeps the root's.
    """
    parts = list(parts)
    out = torch.zeros(group.n_channels, dtype=torch.float32)
    if reduction == "max":
        out.fill_(-float("inf"))
    for i, (member, imp) in enumerate(parts):
        root = torch.as_tensor(member.root_idxs, dtype=torch.long)
        imp = imp.to(torch.float32)
        if reduction in ("sum", "mean"):
            out.scatter_add_(0, root, imp)
        elif reduction == "max":
            out.scatter_reduce_(0, root, imp, reduce="amax")
        elif reduction == "first":
            if i == 0:
                out.scatter_(0, root, imp)
        else:
            raise ValueError(f"unknown reduction {reduction!r}")
    if reduction == "mean" and parts:
        out /= len(parts)
    return out


def normalize(scores: torch.Tensor, how: Optional[str]) -> torch.Tensor:
    """Per-group normalization, as Torch-Pruning's importances do before global ranking."""
    if how in (None, "none"):
        return scores
    if how == "mean":
        return scores / scores.mean()
    if how == "sum":
        return scores / scores.sum()
    if how == "max":
        return scores / scores.max()
    if how == "standardization":
        return (scores - scores.min()) / (scores.max() - scores.min() + 1e-8)
    if how == "gaussian":
        return (scores - scores.mean()) / (scores.std() + 1e-8)
    if how == "lamp":
        sorted_scores, order = scores.sort()
        below = torch.zeros_like(sorted_scores)
        below[1:] = sorted_scores.cumsum(0)[:-1]
        out = torch.empty_like(scores)
        out[order] = sorted_scores / (scores.sum() - below)
        return out
    raise ValueError(f"unknown normalizer {how!r}")


class Observations(dict):
    """``kind -> {key -> tensor}`` for the kinds the manifest declared.

    ``obs.weights`` etc. are shortcuts; an undeclared kind raises a KeyError that
    names the manifest field to fix.
    """

    def _kind(self, kind: str) -> dict[str, torch.Tensor]:
        try:
            return self[kind]
        except KeyError:
            raise KeyError(f"observation {kind!r} was not provided: declare it in manifest.json 'observations'") from None

    @property
    def weights(self) -> dict[str, torch.Tensor]:
        return self._kind("weights")

    @property
    def gradients(self) -> dict[str, torch.Tensor]:
        return self._kind("gradients")

    @property
    def sq_gradients(self) -> dict[str, torch.Tensor]:
        return self._kind("sq_gradients")


# --------------------------------------------------------------------------- base classes


class MethodBase:
    """Common constructor. ``self.hp`` holds the resolved hyperparameters (defaults
    from the manifest, overridden by the harness); ``self.generator`` is seeded."""

    def __init__(self, manifest: MethodManifest, hyperparameters: dict, seed: int, device: str = "cpu"):
        self.manifest = manifest
        self.hp = manifest.resolve_hyperparameters(hyperparameters)
        self.seed = seed
        self.device = device
        self.generator = torch.Generator().manual_seed(seed)


class ImportanceMethod(MethodBase):
    """An importance criterion.

    Override :meth:`score_group` (one group at a time) or :meth:`score` (all at
    once). Contract: for every group return a 1-D float tensor of length
    ``group.n_channels``, finite; higher = more important; the harness removes
    the lowest-scoring channels. Do not modify the observations.
    """

    def score(self, groups: list[Group], obs: Observations) -> dict[str, torch.Tensor]:
        return {g.id: self.score_group(g, obs) for g in groups}

    def score_group(self, group: Group, obs: Observations) -> torch.Tensor:
        raise NotImplementedError("implement score_group(group, obs) or score(groups, obs)")


class RegularizerMethod(MethodBase):
    """A sparsity regularizer used during the harness's sparse-training stage.

    Contract: :meth:`regularize` returns ``{param_key: tensor}`` with tensors of
    the same shape as ``weights[param_key]``; the harness adds them to the
    gradients after ``loss.backward()`` and before ``optimizer.step()``.
    """

    def regularize(self, step: int, total_steps: int, groups: list[Group],
                   weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        raise NotImplementedError


# --------------------------------------------------------------------------- loading


class MethodLoadError(Exception):
    pass


def load_manifest(method_dir: Path) -> MethodManifest:
    path = Path(method_dir) / "manifest.json"
    if not path.is_file():
        raise MethodLoadError(f"{path}: no manifest.json (copy method_template/manifest.json)")
    try:
        return MethodManifest.model_validate_json(path.read_text())
    except ValidationError as e:
        raise MethodLoadError(f"{path}: invalid manifest: {explain(e)}") from None


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


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
    try:
        import numpy as np
        np.random.seed(seed % (2**32))
    except ImportError:  # pragma: no cover - numpy ships with torch images
        pass


def one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return f"{type(err).__name__}: {text}"[:500]


# --------------------------------------------------------------------------- server


def _load(exchange: Path, ref: TensorFile) -> dict[str, torch.Tensor]:
    return load_file(str(exchange / ref.file))


def _save(exchange: Path, name: str, tensors: dict[str, torch.Tensor]) -> TensorFile:
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    tmp = exchange / f".{name}.tmp"
    save_file(tensors, str(tmp))
    os.replace(tmp, exchange / name)
    return TensorFile(file=name, keys=sorted(tensors))


def handle(method: MethodBase, msg, exchange: Path):
    """Answer one request. Exceptions become an ErrorReply."""
    try:
        if isinstance(msg, ScoreRequest):
            if not isinstance(method, ImportanceMethod):
                return ErrorReply(message="this method provides no importance scores")
            obs = Observations({kind: _load(exchange, ref) for kind, ref in msg.observations.items()})
            with torch.no_grad():
                scores = method.score(msg.groups, obs)
            if not isinstance(scores, dict):
                return ErrorReply(message=f"score() returned {type(scores).__name__}, expected dict[group id, tensor]")
            scores = {k: torch.as_tensor(v, dtype=torch.float32) for k, v in scores.items()}
            return ScoreReply(scores=_save(exchange, msg.reply_file, scores))
        if isinstance(msg, RegularizeRequest):
            if not isinstance(method, RegularizerMethod):
                return ErrorReply(message="this method provides no regularizer")
            grads = method.regularize(msg.step, msg.total_steps, msg.groups, _load(exchange, msg.weights))
            if not isinstance(grads, dict):
                return ErrorReply(message=f"regularize() returned {type(grads).__name__}, expected dict")
            return RegularizeReply(grads=_save(exchange, msg.reply_file, grads))
        return ErrorReply(message=f"unexpected message {getattr(msg, 'type', '?')!r}")
    except Exception as e:  # the harness records the one-line reason
        traceback.print_exc(file=sys.stderr)
        return ErrorReply(message=one_line(e))


def serve(method_dir: Path, exchange: Path) -> int:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(str(exchange / SOCKET_NAME))
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
        reply = handle(method, msg, exchange)
        wire.send(sock, reply.model_dump(mode="json"))


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m specs.sdk", description="serve a PruningBench method")
    parser.add_argument("--method-dir", type=Path, default=Path(os.environ.get("PBENCH_METHOD_DIR", "/method")))
    parser.add_argument("--exchange", type=Path, default=Path(os.environ.get("PBENCH_EXCHANGE", "/exchange")))
    parser.add_argument("--threads", type=int, default=int(os.environ.get("PBENCH_THREADS", "1")))
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, args.threads))
    # Method code may print; keep stdout for humans and never mix it with the protocol (it uses the socket).
    return serve(args.method_dir, args.exchange)


if __name__ == "__main__":
    # Run the copy imported as ``specs.sdk`` (not this ``__main__`` copy), so that method
    # classes subclass the very ImportanceMethod the loader checks against.
    import specs.sdk
    sys.exit(specs.sdk.main())
