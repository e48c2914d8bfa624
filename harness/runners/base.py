"""The harness's view of a running method, whatever runs it.

Every runner validates what comes back the same way (:func:`validate_scores`,
:func:`validate_reg_grads`); a method that breaks the contract raises
:class:`~harness.errors.MethodFailure` with a one-line reason.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from typing import Optional

import torch

from harness.errors import HarnessError, MethodFailure
from harness.methods import MethodSource
from specs.manifest import MethodManifest, ObservationKind
from specs.messages import Group
from specs.sdk import Tensors



def _describe_ids(ids) -> str:
    ids = sorted(ids)
    return ", ".join(repr(i) for i in ids[:3]) + (f" (+{len(ids) - 3} more)" if len(ids) > 3 else "")


def validate_scores(groups: list[Group], scores: object) -> Tensors:
    """One finite float score per root channel of every group, nothing else."""
    if not isinstance(scores, dict):
        raise MethodFailure(f"scores must map group id to tensor, got {type(scores).__name__}")
    expected = {g.id: g for g in groups}
    unknown = set(scores) - set(expected)
    if unknown:
        raise MethodFailure(f"scores for unknown group id {_describe_ids(unknown)}")
    missing = set(expected) - set(scores)
    if missing:
        raise MethodFailure(f"no scores for group {_describe_ids(missing)}")
    out: Tensors = {}
    for gid, group in expected.items():
        t = scores[gid]
        if not isinstance(t, torch.Tensor) or not t.is_floating_point():
            raise MethodFailure(f"group {gid!r}: scores must be a float tensor, got {getattr(t, 'dtype', type(t).__name__)}")
        if t.dim() != 1 or t.numel() != group.n_channels:
            raise MethodFailure(f"group {gid!r}: expected {group.n_channels} scores, got shape {tuple(t.shape)}")
        bad = int((~torch.isfinite(t)).sum())
        if bad:
            raise MethodFailure(f"group {gid!r}: {bad} of {t.numel()} scores are NaN or infinite")
        out[gid] = t.detach().to("cpu", torch.float64)
    return out


def validate_reg_grads(weights: Tensors, grads: object) -> Tensors:
    """Regularizer gradients: a subset of the weight keys, same shapes, finite."""
    if not isinstance(grads, dict):
        raise MethodFailure(f"regularizer must return dict[param key, tensor], got {type(grads).__name__}")
    unknown = set(grads) - set(weights)
    if unknown:
        raise MethodFailure(f"regularizer gradients for unknown parameter {_describe_ids(unknown)}")
    out: Tensors = {}
    for key, g in grads.items():
        if not isinstance(g, torch.Tensor) or not g.is_floating_point():
            raise MethodFailure(f"regularizer gradient {key!r} must be a float tensor")
        if g.shape != weights[key].shape:
            raise MethodFailure(f"regularizer gradient {key!r}: expected shape {tuple(weights[key].shape)}, "
                                f"got {tuple(g.shape)}")
        if not torch.isfinite(g).all():
            raise MethodFailure(f"regularizer gradient {key!r} has NaN or infinite values")
        out[key] = g
    return out


class MethodClient(ABC):
    """A started method. Use as a context manager; :meth:`start` performs the handshake."""

    runner: str = "?"

    def __init__(self, source: MethodSource, hyperparameters: dict, seed: int, device: str = "cpu",
                 call_timeout: Optional[float] = None, run_timeout: Optional[float] = None):
        self.source = source
        self.seed = seed
        self.device = device
        try:
            self.hyperparameters = source.manifest.resolve_hyperparameters(hyperparameters)
        except ValueError as e:
            raise HarnessError(str(e)) from None
        limit = source.manifest.resources.call_timeout_s
        self.call_timeout = min(limit, call_timeout) if call_timeout else limit
        #: wall-clock budget for the whole conversation; enforced by runners that can kill the method
        self.run_deadline = None if run_timeout is None else time.monotonic() + run_timeout
        self.image_digest: Optional[str] = None
        self.score_seconds = 0.0

    @property
    def manifest(self) -> MethodManifest:
        return self.source.manifest

    @property
    def observations(self) -> list[ObservationKind]:
        return list(self.manifest.observations)

    def _check_manifest(self, echoed: MethodManifest) -> None:
        if (echoed.id, echoed.version) != (self.manifest.id, self.manifest.version):
            raise MethodFailure(f"handshake: method says it is {echoed.id} {echoed.version}, "
                                f"expected {self.manifest.id} {self.manifest.version}")

    @abstractmethod
    def start(self) -> None: ...

    @abstractmethod
    def _score(self, round: int, groups: list[Group], observations: dict[str, Tensors]) -> object: ...

    @abstractmethod
    def _regularize(self, step: int, total_steps: int, groups: list[Group], weights: Tensors) -> object: ...

    @abstractmethod
    def close(self) -> None: ...

    def peak_memory_mb(self) -> Optional[float]:
        """Peak memory of the running method so far, where the runner can measure it."""
        return None

    def _require(self, capability: str) -> None:
        try:
            self.manifest.require(capability)
        except ValueError as e:
            raise MethodFailure(str(e)) from None

    def score(self, round: int, groups: list[Group], observations: dict[str, Tensors]) -> Tensors:
        self._require("importance")
        t0 = time.perf_counter()
        try:
            raw = self._score(round, groups, observations)
        finally:
            self.score_seconds += time.perf_counter() - t0
        return validate_scores(groups, raw)

    def regularize(self, step: int, total_steps: int, groups: list[Group], weights: Tensors) -> Tensors:
        self._require("regularizer")
        return validate_reg_grads(weights, self._regularize(step, total_steps, groups, weights))

    def __enter__(self) -> "MethodClient":
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

