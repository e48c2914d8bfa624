"""The harness's view of a running method, whatever runs it.

Every runner validates what comes back the same way (:func:`validate_scores`,
:func:`validate_reg_grads`, :func:`validate_reg_scales`); a method that breaks the contract raises
:class:`~harness.errors.MethodFailure` with a one-line reason.

Sparse training talks to a regularizer through a :class:`RegularizerLink`, which every runner
opens with :meth:`MethodClient.regularizer_link`: ``link(step, total_steps, weights) -> RegGrads``.
"""

from __future__ import annotations

import threading
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Optional

import torch

from harness.errors import HarnessError, MethodFailure
from harness.methods import MethodSource
from harness.runners.sandbox import Limits, resolve_limits
from specs.manifest import MethodManifest, ObservationKind
from specs.messages import Group
from specs.tensors import Tensors, split_scale_key
from specs.version import Dialect, dialect_of


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


@dataclass
class RegGrads:
    """A validated regularizer answer: dense gradients ``{key: tensor}`` (each the shape of its
    parameter) and scales ``{key: [(dim, s)]}`` (``s`` 1-D, ``shape[dim]`` long): the harness adds
    ``dense`` and ``sum of broadcast scales * weight`` to the gradients."""

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


def validate_reg(weights: Tensors, dense: object, scales: object) -> RegGrads:
    return RegGrads(validate_reg_grads(weights, dense), validate_reg_scales(weights, scales))


class RegularizerLink:
    """``link(step, total_steps, weights) -> RegGrads`` for one sparse-training run; ``weights`` are the
    current parameters of every group member. Opened by :meth:`MethodClient.regularizer_link`."""

    def __init__(self, client: "MethodClient", groups: list[Group]):
        self.client = client
        self.groups = groups

    def __call__(self, step: int, total_steps: int, weights: Tensors) -> RegGrads:
        raise NotImplementedError

    def close(self) -> None:
        pass


class LegacyLink(RegularizerLink):
    """The ``"dense"`` dialect (spec 1.0): the runner's ``regularize()`` (groups and dense gradients every step)."""

    def __call__(self, step: int, total_steps: int, weights: Tensors) -> RegGrads:
        return RegGrads(dense=self.client.regularize(step, total_steps, self.groups, weights))


class MethodClient(ABC):
    """A started method. Use as a context manager; :meth:`start` performs the handshake.

    What the method speaks is :attr:`dialect` (:func:`specs.version.dialect_of` its manifest's
    ``spec_version``); the client never compares version numbers itself. Sparse training opens the link
    class :attr:`links` holds for the dialect's ``regularizer`` (one class per behaviour)."""

    runner: str = "?"
    #: the sparse-training link of each regularizer dialect; runners add their ``"compact"`` exchange
    links: dict[str, type[RegularizerLink]] = {"dense": LegacyLink}

    def __init__(self, source: MethodSource, hyperparameters: dict, seed: int, device: str = "cpu",
                 call_timeout: Optional[float] = None, run_timeout: Optional[float] = None,
                 limits: Optional[Limits] = None):
        self.source = source
        #: what the method speaks (by the spec version its manifest declares)
        self.dialect: Dialect = dialect_of(source.manifest.spec_version)
        self.seed = seed
        self.device = device
        try:
            self.hyperparameters = source.manifest.resolve_hyperparameters(hyperparameters)
        except ValueError as e:
            raise HarnessError(str(e)) from None
        limit = source.manifest.resources.call_timeout_s
        self.call_timeout = min(limit, call_timeout) if call_timeout else limit
        #: wall-clock budget for the whole conversation; enforced by runners that can kill the method
        self.run_timeout = run_timeout
        self.run_deadline = None if run_timeout is None else time.monotonic() + run_timeout
        #: the organizers' caps (:mod:`harness.runners.sandbox`); runners without a sandbox enforce what they can
        self.limits = limits or resolve_limits()
        self.image_digest: Optional[str] = None
        self.score_seconds = 0.0
        #: seconds :meth:`start` took (launch to handshake), and the part of them the harness waited for
        self.start_seconds = 0.0
        self.start_wait_seconds = 0.0
        self._starting: Optional[threading.Thread] = None
        self._start_error: Optional[BaseException] = None

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

    def launch_key(self) -> Optional[tuple]:
        """What the method's process depends on, for a runner whose process can be launched ahead of its run
        (:mod:`harness.runners.spares`); None: it cannot."""
        return None

    def prelaunch(self) -> None:
        """Launch the method ahead of :meth:`start` (runners with a :meth:`launch_key`)."""

    def launched(self) -> bool:
        return False

    def take_session(self, other: "MethodClient") -> None:
        """Serve ``other``'s run (a spare taken over before its handshake): its seed, hyperparameters and
        deadlines, the run deadline counted from now."""
        self.seed, self.hyperparameters = other.seed, other.hyperparameters
        self.call_timeout, self.run_timeout = other.call_timeout, other.run_timeout
        self.run_deadline = other.run_deadline

    #: whether :meth:`begin` starts the method on a thread (a runner whose start is instant, or touches
    #: the harness's own state, says False and starts at once)
    starts_in_background = True

    def begin(self) -> "MethodClient":
        """Start the method off the critical path: :meth:`start` runs on a thread while the harness goes
        on (building the graph, collecting observations); the first request, or :meth:`ready`, waits for
        it. Close the client in every case (``with client.begin(): ...``: it does)."""
        self._begun = True
        if not self.starts_in_background:
            self._timed_start()
            return self
        self._starting = threading.Thread(target=self._background_start, name=f"start-{self.manifest.id}",
                                          daemon=True)
        self._starting.start()
        return self

    def _timed_start(self) -> None:
        t0 = time.perf_counter()
        try:
            self.start()
        finally:
            self.start_seconds = time.perf_counter() - t0

    def _background_start(self) -> None:
        try:
            self._timed_start()
        except BaseException as e:  # raised where the harness waits for it (ready)
            self._start_error = e

    def ready(self) -> None:
        """Wait until a method begun with :meth:`begin` has started (re-raising what its start raised);
        the time waited goes to ``start_wait_seconds``."""
        if self._starting is None:
            return
        t0 = time.perf_counter()
        self._starting.join()
        self._starting = None
        self.start_wait_seconds += time.perf_counter() - t0
        if self._start_error is not None:
            error, self._start_error = self._start_error, None
            raise error

    def _abandon_start(self) -> None:
        """For :meth:`close`: stop waiting for a start still in progress (runners make their start loop
        return soon, see :attr:`closing`) and forget what it raised."""
        self.closing = True
        if self._starting is not None:
            self._starting.join()
            self._starting, self._start_error = None, None

    #: set by :meth:`close`: a start in progress on a thread gives up
    closing = False
    _begun = False

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
        self.ready()
        t0 = time.perf_counter()
        try:
            raw = self._score(round, groups, observations)
        finally:
            self.score_seconds += time.perf_counter() - t0
        return validate_scores(groups, raw)

    def regularize(self, step: int, total_steps: int, groups: list[Group], weights: Tensors) -> Tensors:
        self._require("regularizer")
        self.ready()
        return validate_reg_grads(weights, self._regularize(step, total_steps, groups, weights))

    def regularizer_link(self, groups: list[Group]) -> RegularizerLink:
        """The sparse-training exchange with this regularizer over ``groups``: the :attr:`links` entry of
        the method's dialect (a runner without a ``"compact"`` link speaks ``"dense"`` to every method: a
        1.1 method answers both). Close the link when training ends."""
        link = self.links.get(self.dialect.regularizer, LegacyLink)
        return link(self, groups)

    def __enter__(self) -> "MethodClient":
        if self._begun:  # ``with client.begin():`` (started, or starting on its thread)
            return self
        try:
            self._timed_start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

