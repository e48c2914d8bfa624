"""Step 1 of the protocol, for regularizer methods: sparse training.

The harness trains the model with the track's ``sparsify`` recipe (identical for
every method). After each ``loss.backward()`` it sends the current weights of every
group member to the regularizer method and adds what comes back to the gradients
before ``optimizer.step()`` (through ``Task.train``'s ``grad_hook``).

The exchange happens every step, so it is kept cheap (spec 1.1, used with methods
whose manifest declares ``spec_version`` >= 1.1):

- only group members' parameters travel (:func:`harness.protocol.observations.param_keys`),
  always to the same file, rewritten in place (created once, never reopened by name);
- the groups are described once (step 0); later requests set ``same_groups``;
- the method may answer with per-channel scales (``RegularizeReply.scales``): a few
  kilobytes that the harness expands in-process (``grad += s * w``) instead of a
  second copy of the model.

Methods that declare spec 1.0 get the 1.0 conversation (groups and dense gradients
every step) through the runner's own ``regularize()``. Every answer is validated
before use; a broken one raises :class:`~harness.errors.MethodFailure`.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch
import torch.nn as nn
from safetensors.torch import save as safetensors_bytes

from harness.errors import MethodFailure
from harness.protocol import distributed
from harness.protocol.observations import param_keys
from harness.runners.base import MethodClient, Tensors, validate_reg_grads
from harness.protocol.train import Progress
from harness.tasks.base import Task
from specs.manifest import MethodManifest
from specs.messages import Group, RegularizeReply, RegularizeRequest, TensorFile
from specs.sdk import broadcast_scale, one_line, split_compact, split_scale_key
from specs.track import Recipe

WEIGHTS_FILE = "reg-weights.safetensors"
GRADS_FILE = "reg-grads.safetensors"
SCALES_FILE = "reg-scales.safetensors"
#: a reply file may exceed its expected size by this much (safetensors header)
REPLY_SLACK_BYTES = 1 << 20


def speaks_compact(manifest: MethodManifest) -> bool:
    """Spec 1.1 exchange (groups once, compact scales) for methods that declare it."""
    try:
        major, minor = (int(x) for x in manifest.spec_version.split(".")[:2])
    except ValueError:
        return False
    return (major, minor) >= (1, 1)


@dataclass
class RegGrads:
    """A validated answer: dense gradients ``{key: tensor}`` and scales ``{key: [(dim, s)]}``."""

    dense: Tensors = field(default_factory=dict)
    scales: dict[str, list[tuple[int, torch.Tensor]]] = field(default_factory=dict)


def validate_reg_scales(weights: Tensors, scales: object) -> dict[str, list[tuple[int, torch.Tensor]]]:
    """Compact scales: keys ``<param key>@<dim>`` of known parameters, 1-D, ``shape[dim]`` long, finite."""
    if not isinstance(scales, dict):
        raise MethodFailure(f"regularizer scales must map '<param>@<dim>' to tensor, got {type(scales).__name__}")
    out: dict[str, list[tuple[int, torch.Tensor]]] = {}
    for name, s in scales.items():
        key, dim = split_scale_key(name)
        if dim is None or key not in weights:
            raise MethodFailure(f"regularizer scale for unknown parameter {name!r}")
        shape = tuple(weights[key].shape)
        if dim >= len(shape):
            raise MethodFailure(f"regularizer scale {name!r}: {key!r} has only {len(shape)} dimensions")
        if not isinstance(s, torch.Tensor) or not s.is_floating_point():
            raise MethodFailure(f"regularizer scale {name!r} must be a float tensor")
        if tuple(s.shape) != (shape[dim],):
            raise MethodFailure(f"regularizer scale {name!r}: expected shape ({shape[dim]},), got {tuple(s.shape)}")
        if not torch.isfinite(s).all():
            raise MethodFailure(f"regularizer scale {name!r} has NaN or infinite values")
        out.setdefault(key, []).append((dim, s))
    return out


def _validated(weights: Tensors, dense: object, scales: object) -> RegGrads:
    return RegGrads(validate_reg_grads(weights, dense), validate_reg_scales(weights, scales))


@torch.no_grad()
def apply_reg_grads(params: dict[str, nn.Parameter], reg: RegGrads) -> None:
    """``grad += dense`` and ``grad += (sum of broadcast scales) * weight``, in place."""
    for key, g in reg.dense.items():
        p = params[key]
        _grad(p).add_(g.to(p.device, p.dtype))
    for key, items in reg.scales.items():
        p = params[key]
        coef = None
        for dim, s in items:  # outer sum of the per-dimension scales: one pass over the weight
            b = broadcast_scale(s.to(p.device, p.dtype), p.dim(), dim)
            coef = b if coef is None else coef + b
        _grad(p).addcmul_(p, coef)


def _grad(p: nn.Parameter) -> torch.Tensor:
    if p.grad is None:  # a parameter the loss did not reach this step
        p.grad = torch.zeros_like(p)
    return p.grad


# --------------------------------------------------------------------------- links


class RegularizerLink:
    """``link(step, total_steps, weights) -> RegGrads`` for one sparse-training run."""

    def __init__(self, client: MethodClient, groups: list[Group]):
        self.client = client
        self.groups = groups

    def __call__(self, step: int, total_steps: int, weights: Tensors) -> RegGrads:
        raise NotImplementedError

    def close(self) -> None:
        pass


class LegacyLink(RegularizerLink):
    """Spec 1.0: the runner's ``regularize()`` (groups and dense gradients every step)."""

    def __call__(self, step: int, total_steps: int, weights: Tensors) -> RegGrads:
        return RegGrads(dense=self.client.regularize(step, total_steps, self.groups, weights))


class InProcessLink(RegularizerLink):
    """The method object lives in this process: call its compact form directly."""

    def __call__(self, step: int, total_steps: int, weights: Tensors) -> RegGrads:
        # copies: the method cannot touch the model; float32 on CPU, as over the wire
        copies = {k: t.detach().to("cpu", torch.float32, copy=True) for k, t in weights.items()}
        try:
            out = self.client.method.regularize_compact(step, total_steps, self.groups, copies)
        except Exception as e:
            raise MethodFailure(f"method error during 'regularize': {one_line(e)}") from None
        if not isinstance(out, dict):
            raise MethodFailure(f"regularize_compact() returned {type(out).__name__}, expected dict")
        dense, scales = split_compact(out)
        return _validated(weights, dense, scales)


class SocketLink(RegularizerLink):
    """Spec 1.1 over the runner's socket (subprocess and docker runners)."""

    def __init__(self, client: MethodClient, groups: list[Group]):
        super().__init__(client, groups)
        self.weights_file = _InPlaceFile(Path(client.exchange), WEIGHTS_FILE)
        self.sent_groups = False

    def __call__(self, step: int, total_steps: int, weights: Tensors) -> RegGrads:
        self.weights_file.write(weights)
        request = RegularizeRequest(
            step=step, total_steps=total_steps, groups=[] if self.sent_groups else self.groups,
            same_groups=self.sent_groups, weights=TensorFile(file=WEIGHTS_FILE, keys=self.weights_file.keys),
            reply_file=GRADS_FILE, scales_file=SCALES_FILE)
        reply = self.client._call(request, RegularizeReply, self.client.call_timeout, "regularize")
        self.sent_groups = True
        for ref, name in ((reply.grads, GRADS_FILE), (reply.scales, SCALES_FILE)):
            if ref is not None and ref.file != name:
                raise MethodFailure(f"regularizer replied in {ref.file!r}, expected {name!r}")
        dense_bytes = sum(t.numel() * 8 + 256 for t in weights.values())
        scale_bytes = sum(sum(t.shape) * 8 + 512 for t in weights.values())
        dense = self.client._read(reply.grads, dense_bytes + REPLY_SLACK_BYTES)
        scales = self.client._read(reply.scales, scale_bytes + REPLY_SLACK_BYTES) if reply.scales else {}
        return _validated(weights, dense, scales)

    def close(self) -> None:
        self.weights_file.close()


def open_link(client: MethodClient, groups: list[Group]) -> RegularizerLink:
    if not speaks_compact(client.manifest):
        return LegacyLink(client, groups)
    if hasattr(client, "method"):  # the inprocess runner
        return InProcessLink(client, groups)
    if hasattr(client, "exchange") and hasattr(client, "_call") and hasattr(client, "_read"):
        return SocketLink(client, groups)
    return LegacyLink(client, groups)


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


# --------------------------------------------------------------------------- the stage


def make_grad_hook(model: nn.Module, groups: list[Group], link: RegularizerLink):
    """``hook(step, total_steps)`` for ``Task.train``: the group members' current weights go to
    the regularizer, its validated answer is added to their gradients."""
    keys = param_keys(groups)
    params = dict(model.named_parameters())
    missing = [k for k in keys if k not in params]
    if missing:
        raise MethodFailure(f"internal error: group parameter {missing[0]!r} is not in the model")

    def hook(step: int, total_steps: int) -> None:
        weights = {k: params[k].detach() for k in keys}
        apply_reg_grads(params, link(step, total_steps, weights))

    return hook


def sparsify(task: Task, model: nn.Module, recipe: Recipe, client: Optional[MethodClient], groups: list[Group], seed: int,
             progress: Optional[Progress] = None) -> float:
    """Sparse-train ``model`` in place with ``recipe``, adding the regularizer's gradients after
    every backward pass. Returns the wall time (seconds).

    Under torchrun only rank 0 has a ``client`` (``None`` elsewhere): it asks the regularizer once per
    step and every rank adds the same answer (the ranks hold the same weights)."""
    link = open_link(client, groups) if client is not None else None
    t0 = time.perf_counter()
    try:
        task.train(model, recipe, seed=seed, progress=progress, stage="sparsify",
                   grad_hook=make_grad_hook(model, groups, distributed.shared(link)))
    finally:
        if link is not None:
            link.close()
    return time.perf_counter() - t0
