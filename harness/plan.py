"""The run plan: one validated object for everything a user asks the harness to run.

``evaluate`` (one method), ``sweep`` (methods x regularizers x speedups x seeds), ``recipe-swap``
(methods x retraining recipes) and the web platform's task builder all build a :class:`Plan` —
from CLI flags, from a plan file (``pbench-harness sweep --plan plan.yaml``) or from a form — and
run it with :func:`run_plan`. All validation lives here: :meth:`Plan.resolve` turns names into
a track, method sources and one :class:`~harness.protocol.run.RunSpec` per run, or raises a
:class:`PlanError` naming the offending field with a one-line message (the CLI prints it; the web
form shows it next to the field). The protocol trusts the RunSpecs it is given; the few callers that
build one without a plan (blind evaluation, the submission smoke run) check it with :func:`check_run`.

This module imports neither torch nor the protocol at import time (the CLI's ``--help`` stays fast).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Literal, Optional

from pydantic import Field, StrictInt, ValidationError

from harness.configs import read_mapping
from harness.errors import HarnessError
from harness.registry import UnknownName
from specs.base import Scalar, Strict, explain
from specs.manifest import SandboxLimits
from specs.track import TRACK_RECIPE, Strategy, TrackConfig

if TYPE_CHECKING:
    from harness.methods import MethodSource
    from harness.orchestration.sweep import OnResult, SweepSummary
    from harness.protocol.run import RunSpec

Runner = Literal["inprocess", "subprocess", "docker"]
Device = Literal["cpu", "cuda"]
Executor = Literal["local", "slurm"]
#: ``methods``/``regularizers`` entries meaning "every discovered method that provides it" / "none"
ALL, NONE = "all", "-"


class PlanError(HarnessError):
    """Bad input in a plan. ``field`` names the plan field at fault (``None``: the plan as a whole)."""

    def __init__(self, field: Optional[str], message: str):
        super().__init__(message)
        self.field = field


class Plan(Strict):
    """What to run. Every field has a default but the track (``track``, or ``model`` [+ ``dataset``])."""

    track: Optional[str] = Field(None, description="track id or track file")
    model: Optional[str] = Field(None, description="model: a registered name, torchvision:<name>, timm:<name>, "
                                                   "<module>:<factory> or file:<path>; selects its track (with "
                                                   "dataset: the pair's, or one derived from the dataset's default)")
    dataset: Optional[str] = Field(None, description="dataset name (with model)")
    methods: list[str] = Field(default_factory=lambda: [ALL], min_length=1,
                               description="importance method ids or folders, or 'all'")
    regularizers: list[str] = Field(default_factory=lambda: [NONE], min_length=1,
                                    description="regularizer ids or folders paired with every method; '-' = none, "
                                                "'all' = every regularizer")
    speedups: Optional[list[float]] = Field(None, min_length=1, description="MACs speedup targets (default: the "
                                                                            "track's)")
    seeds: Optional[list[int]] = Field(None, min_length=1, description="run seeds (default: the track's)")
    strategy: Optional[Strategy] = Field(None, description="override the track's pruning strategy")
    round_to: Optional[StrictInt] = Field(None, ge=1, le=1024, description="override the track's pruning.round_to "
                                                                     "(pruned groups keep a multiple of it)")
    recipes: Optional[list[str]] = Field(None, description="recipe-swap mode: retraining recipes of the track "
                                                           "('track' = its own)")
    own: dict[str, str] = Field(default_factory=dict, description="recipe-swap: each method's own recipe")
    hyperparameters: dict[str, Scalar] = Field(default_factory=dict, description="importance hyperparameters")
    reg_hyperparameters: dict[str, Scalar] = Field(default_factory=dict, description="regularizer hyperparameters")
    runner: Runner = "subprocess"
    device: Device = "cpu"
    out: Path = Path("results")
    data_root: Optional[Path] = None
    cache_dir: Optional[Path] = None
    call_timeout: Optional[float] = Field(None, gt=0, description="per-call deadline for the method, seconds")
    save_models: bool = True
    executor: Executor = "local"
    jobs: int = Field(1, ge=1, description="local executor: runs in parallel (worker processes)")
    slurm_config: Optional[Path] = None
    retry_failed: bool = False
    sandbox: SandboxLimits = Field(default_factory=SandboxLimits,
                                   description="caps on method containers (docker runner); unset fields: the "
                                               "track's sandbox, then the defaults")
    min_free_mb: Optional[float] = Field(None, ge=0, description="start no run with less free space under the "
                                                                 "result store or the Docker data root (MB)")

    # -- construction --------------------------------------------------------------------------
    @classmethod
    def build(cls, **fields) -> "Plan":
        """``Plan(**fields)`` with a validation error as a one-line :class:`PlanError`."""
        try:
            return cls.model_validate(fields)
        except ValidationError as e:
            first = e.errors()[0]["loc"]
            raise PlanError(str(first[0]) if first else None, f"invalid plan: {explain(e)}") from None

    @classmethod
    def from_file(cls, path: Path, **overrides) -> "Plan":
        """A YAML/JSON plan file; ``overrides`` (e.g. flags given on the command line) win."""
        path = Path(path)
        try:
            data = read_mapping(path, "plan file")
        except HarnessError as e:
            raise PlanError(None, str(e)) from None
        merged = {**data, **{k: {**data[k], **v} if isinstance(v, dict) and isinstance(data.get(k), dict) else v
                             for k, v in overrides.items()}}  # e.g. one sandbox cap given as a flag
        try:
            return cls.build(**merged)
        except PlanError as e:
            raise PlanError(e.field, f"{path}: {e}") from None

    # -- resolution ----------------------------------------------------------------------------
    def resolve(self) -> "ResolvedPlan":
        """Names -> objects, and one RunSpec per run; bad input raises :class:`PlanError`."""
        from harness.protocol.run import RunSpec
        if self.slurm_config is not None and self.executor != "slurm":
            raise PlanError("slurm_config", "--slurm-config needs --executor slurm")
        if self.own and self.recipes is None:
            raise PlanError("own", "--own needs --recipes (the recipe-swap mode)")
        track, note = self._track()
        targets = self.speedups or list(track.pruning.speedups)
        check_speedups(targets)
        seeds = self.seeds or list(track.seeds)
        check_seeds(seeds)
        methods, regularizers = self._methods(), self._regularizers(track)
        methods, regularizers, skipped = self._applicable(track, methods, regularizers)
        if self.recipes is not None:
            combos = [dict(method=m, recipe=None if r == TRACK_RECIPE else r) for m in methods
                      for r in self._recipes(track, methods)]
        else:
            combos = [dict(method=m, regularizer=r) for m in methods for r in regularizers]
        common = dict(runner=self.runner, out=self.out, data_root=self.data_root, cache_dir=self.cache_dir,
                      device=self.device, call_timeout=self.call_timeout, save_models=self.save_models,
                      hyperparameters=dict(self.hyperparameters), reg_hyperparameters=dict(self.reg_hyperparameters),
                      sandbox=self.sandbox)
        specs = [RunSpec(track=track, speedup=t, seed=s, **combo, **common)
                 for combo in combos for t in targets for s in seeds]
        for spec in specs[:: len(targets) * len(seeds)]:  # one per combination: hyperparameters fit every method
            _check_hyperparameters(spec)
        if self.runner == "docker":  # no method may ask for more than the caps (checked before the first run)
            from harness.runners.sandbox import limits_for
            _check_resources(limits_for(self.runner, self.sandbox, track.sandbox),
                             [*methods, *(c.get("regularizer") for c in combos)])
        slurm = self._slurm()
        return ResolvedPlan(self, track, targets, seeds, methods, specs, slurm, [n for n in [note] if n] + skipped)

    def _track(self) -> tuple[TrackConfig, Optional[str]]:
        """The track, and a note when it was derived (a model without a registered track for the dataset:
        :func:`harness.tracks.resolve_track`)."""
        from harness.tracks import resolve_track, tracks_of_model
        note = None
        try:
            if self.track or (self.model and self.dataset):
                cfg, note = resolve_track(self.track, self.model, self.dataset, self.data_root)
            elif self.model:
                tracks = tracks_of_model(self.model)
                if len(tracks) != 1:
                    raise PlanError("model", f"model {self.model!r} has {len(tracks)} tracks "
                                             f"({', '.join(t.id for t in tracks)}): give --dataset or --track")
                cfg = tracks[0]
            elif self.dataset:
                raise PlanError("model", "give --model with --dataset (or --track)")
            else:
                raise PlanError("track", "give --track, or --model (and --dataset if the model has several tracks)")
        except (HarnessError, UnknownName) as e:
            if isinstance(e, PlanError):
                raise
            raise PlanError("model" if self.model else "track", str(e)) from None
        if self.strategy is not None and self.strategy != cfg.pruning.strategy:
            cfg = cfg.model_copy(update={"pruning": cfg.pruning.model_copy(update={"strategy": self.strategy})})
        if self.round_to is not None and self.round_to != cfg.pruning.round_to:
            cfg = cfg.model_copy(update={"pruning": cfg.pruning.model_copy(update={"round_to": self.round_to})})
        return cfg, note

    def _applicable(self, track: TrackConfig, methods: list, regularizers: list) -> tuple[list, list, list[str]]:
        """The methods and regularizers that can score the track's model (manifest ``requires``), and one
        note per pair left out. Bad input when a list has nothing left."""
        from harness.data import DatasetError
        from harness.tracks import inapplicable
        try:
            refused = inapplicable(track, methods + [r for r in regularizers if r is not None], self.data_root)
        except DatasetError:  # no data here to build the model on: each run checks it before it starts
            return methods, regularizers, []
        kept = [m for m in methods if m.id not in refused]
        regs = [r for r in regularizers if r is None or r.id not in refused]
        if not kept:
            raise PlanError("methods", refused[methods[0].id])
        if not regs:
            raise PlanError("regularizers", next(refused[r.id] for r in regularizers if r is not None))
        return kept, regs, [f"skipped: {reason}" for reason in refused.values()]

    def _methods(self) -> list["MethodSource"]:
        from harness.methods import providing
        if self.methods == [ALL]:
            return providing("importance")
        sources = [_find("methods", name) for name in self.methods]
        for src in sources:
            _require("methods", src, "importance")
        return sources

    def _regularizers(self, track: TrackConfig) -> list[Optional["MethodSource"]]:
        from harness.methods import providing
        out: list[Optional[MethodSource]] = []
        for name in self.regularizers:
            name = name.strip()
            if name in ("", NONE, "none"):
                out.append(None)
            elif name == ALL:
                out += providing("regularizer")
            else:
                src = _find("regularizers", name)
                _require("regularizers", src, "regularizer")
                out.append(src)
        _check_regularizers(track, out, self.reg_hyperparameters)
        return out

    def _recipes(self, track: TrackConfig, methods: list["MethodSource"]) -> list[str]:
        if len(methods) < 2:
            raise PlanError("methods", "recipe swap: give at least two methods to compare")
        if self.regularizers not in ([NONE], ["none"]):
            raise PlanError("regularizers", "recipe swap compares importance methods: drop --regularizers")
        if len(self.recipes) < 2:
            raise PlanError("recipes", f"recipe swap: give at least two recipes (track {track.id} has: "
                                       f"{', '.join([TRACK_RECIPE, *track.recipes])})")
        for name in self.recipes:
            try:
                track.retrain_recipe(name)
            except ValueError as e:
                raise PlanError("recipes", str(e)) from None
        ids = [m.id for m in methods]
        for method, recipe in self.own.items():
            if method not in ids or recipe not in self.recipes:
                raise PlanError("own", f"own: expected method=recipe with a method from --methods and a recipe from "
                                       f"--recipes, got {method}={recipe}")
        return list(self.recipes)

    def _slurm(self):
        if self.executor != "slurm":
            return None
        from harness.orchestration.cluster import SlurmOptions, load_slurm_options
        try:
            slurm = load_slurm_options(self.slurm_config) if self.slurm_config else SlurmOptions()
        except HarnessError as e:
            raise PlanError("slurm_config", str(e)) from None
        if self.device == "cuda" and slurm.gpus_per_job == 0:
            raise PlanError("slurm_config", "--device cuda on Slurm: set gpus_per_job >= 1 in the --slurm-config file")
        return slurm


# -- the checks of one run: Plan.resolve's, and check_run's for a RunSpec built without a plan ----------------
def check_speedups(targets: list[float]) -> None:
    """Every MACs speedup target is > 1 (and at most 1000), and none is given twice (the same run twice)."""
    bad = [t for t in targets if not 1.0 < t <= 1000]
    if bad:
        raise PlanError("speedups", f"speedup must be > 1 (e.g. 2, 4, 8), got {bad[0]:g}")
    _once("speedups", "speedup", targets)


def check_seeds(seeds: list[int]) -> None:
    """Every seed is >= 0, and none is given twice (the same run twice)."""
    bad = [s for s in seeds if s < 0]
    if bad:
        raise PlanError("seeds", f"seeds must be >= 0, got {bad[0]}")
    _once("seeds", "seed", seeds)


def _once(field: str, what: str, values: list) -> None:
    twice = next((v for i, v in enumerate(values) if v in values[:i]), None)
    if twice is not None:
        raise PlanError(field, f"{what} {twice:g} is given twice (it would be the same run twice)")


def _check_regularizers(track: TrackConfig, regularizers: list[Optional["MethodSource"]],
                        reg_hyperparameters: dict) -> None:
    """Sparse training needs the track's budget for it; regularizer hyperparameters need a regularizer."""
    if any(r is not None for r in regularizers) and track.sparsify.epochs == 0:
        raise PlanError("regularizers", f"track {track.id} has no sparse-training budget (sparsify.epochs is 0)")
    if reg_hyperparameters and all(r is None for r in regularizers):
        raise PlanError("reg_hyperparameters", "regularizer hyperparameters given without a regularizer")


def _check_hyperparameters(spec: "RunSpec") -> None:
    """The run's hyperparameters fit its method's (and regularizer's) declared ones."""
    from harness.store import resolved_hyperparameters
    try:
        resolved_hyperparameters(spec.method, spec.hyperparameters)
    except HarnessError as e:
        raise PlanError("hyperparameters", str(e)) from None
    if spec.regularizer is not None:
        try:
            resolved_hyperparameters(spec.regularizer, spec.reg_hyperparameters)
        except HarnessError as e:
            raise PlanError("reg_hyperparameters", str(e)) from None


def _check_resources(limits, sources: list[Optional["MethodSource"]]) -> None:
    """Under docker, no method's manifest may ask for more than the caps ``limits``."""
    from harness.runners.sandbox import ResourcesRejected, check_resources
    for source in {id(s): s for s in sources if s is not None}.values():
        try:
            check_resources(source.manifest, limits)
        except ResourcesRejected as e:
            raise PlanError("sandbox", str(e)) from None


def check_run(spec: "RunSpec") -> None:
    """What :meth:`Plan.resolve` checks, for one RunSpec built without a plan (the organizers' blind
    evaluation, the submission's smoke run): the same one-line :class:`PlanError`, before anything runs.
    :func:`harness.protocol.run.evaluate` trusts its RunSpec: it checks none of this again."""
    check_speedups([spec.speedup])
    check_seeds([spec.seed])
    _require("methods", spec.method, "importance")
    if spec.regularizer is not None:
        _require("regularizers", spec.regularizer, "regularizer")
    _check_regularizers(spec.track, [spec.regularizer], spec.reg_hyperparameters)
    _check_hyperparameters(spec)
    if spec.runner == "docker":
        _check_resources(spec.limits(), [spec.method, spec.regularizer])


def _find(field_name: str, name: str) -> "MethodSource":
    from harness.methods import find_method
    try:
        return find_method(name.strip())
    except (HarnessError, UnknownName) as e:
        raise PlanError(field_name, str(e)) from None


def _require(field_name: str, source: "MethodSource", capability: str) -> None:
    try:
        source.manifest.require(capability)
    except ValueError as e:
        raise PlanError(field_name, str(e)) from None


@dataclass
class ResolvedPlan:
    """A plan whose names are resolved: the track, the targets and seeds, the importance methods, one
    RunSpec per run (combination x target x seed), and the Slurm options (``executor: slurm``)."""

    plan: Plan
    track: TrackConfig
    targets: list[float]
    seeds: list[int]
    methods: list["MethodSource"]
    specs: list["RunSpec"] = field(default_factory=list)
    slurm: Optional[object] = None
    #: what resolution decided on the user's behalf, one line each: a derived track, methods left out
    #: because they cannot score the track's model
    notes: list[str] = field(default_factory=list)


def run_plan(resolved: ResolvedPlan, on_result: Optional["OnResult"] = None, progress=None,
             log: Callable[[str], None] = print, events=None, rerun: bool = False) -> "SweepSummary":
    """Run (or skip, if recorded) every run of the plan with the sweep machinery; ``events``
    (:class:`harness.orchestration.events.EventLog`): live events and cancelling for every run.
    ``rerun`` (the ``evaluate`` command): every run now, here, recorded or not, each resolving its own
    base (:func:`harness.orchestration.sweep.run_each`)."""
    from harness.orchestration.sweep import run_each, run_sweep
    if rerun:
        return run_each(resolved.specs, on_result, progress, events)
    plan = resolved.plan
    return run_sweep(resolved.specs, plan.out, jobs=plan.jobs, retry_failed=plan.retry_failed, on_result=on_result,
                     progress=progress, executor=plan.executor, slurm=resolved.slurm, log=log, events=events,
                     min_free_mb=plan.min_free_mb)
