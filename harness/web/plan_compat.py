"""TEMPORARY: the plan interface of ``harness.plan`` (tag ``plan-v1``) over today's CLI helpers.

The web layer imports ``Plan``, ``PlanError``, ``ResolvedPlan`` from :mod:`harness.web.planning`
only; when ``harness/plan.py`` lands this module is deleted and that import switches over.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

from pydantic import Field, ValidationError

from harness.errors import HarnessError
from harness.registry import UnknownName
from specs.base import Scalar, Strict, explain
from specs.track import Strategy, TrackConfig


class PlanError(HarnessError):
    def __init__(self, field: Optional[str], message: str):
        super().__init__(message)
        self.field = field


class Plan(Strict):
    track: Optional[str] = None
    model: Optional[str] = None
    dataset: Optional[str] = None
    methods: list[str] = Field(default_factory=lambda: ["all"], min_length=1)
    regularizers: list[str] = Field(default_factory=lambda: ["-"], min_length=1)
    speedups: Optional[list[float]] = Field(None, min_length=1)
    seeds: Optional[list[int]] = Field(None, min_length=1)
    strategy: Optional[Strategy] = None
    hyperparameters: dict[str, Scalar] = Field(default_factory=dict)
    reg_hyperparameters: dict[str, Scalar] = Field(default_factory=dict)
    runner: Literal["inprocess", "subprocess", "docker"] = "subprocess"
    device: Literal["cpu", "cuda"] = "cpu"
    out: Path = Path("results")
    data_root: Optional[Path] = None
    cache_dir: Optional[Path] = None
    call_timeout: Optional[float] = Field(None, gt=0)
    save_models: bool = True
    executor: Literal["local", "slurm"] = "local"
    jobs: int = Field(1, ge=1)
    slurm_config: Optional[Path] = None
    retry_failed: bool = False

    @classmethod
    def build(cls, **fields) -> "Plan":
        try:
            return cls.model_validate(fields)
        except ValidationError as e:
            loc = e.errors()[0]["loc"]
            raise PlanError(str(loc[0]) if loc else None, f"invalid plan: {explain(e)}") from None

    def resolve(self) -> "ResolvedPlan":
        from harness.cli import evaluate as cli
        from harness.protocol.run import RunSpec
        from harness.store import resolved_hyperparameters

        def attempt(field_name, fn, *args):
            try:
                return fn(*args)
            except (HarnessError, UnknownName) as e:
                raise PlanError(field_name, str(e)) from None

        strategy = cli.Strategy(self.strategy) if self.strategy else None
        track = attempt("track" if self.track else "model", cli.resolve_track, self.track, self.model, self.dataset,
                        strategy)
        targets = self.speedups or list(track.pruning.speedups)
        bad = [t for t in targets if not 1.0 < t <= 1000]
        if bad:
            raise PlanError("speedups", f"speedup must be > 1 (e.g. 2, 4, 8), got {bad[0]:g}")
        seeds = self.seeds or list(track.seeds)
        methods = attempt("methods", cli._importance_sources, ",".join(self.methods))
        regs = attempt("regularizers", cli._regularizer_list, ",".join(self.regularizers))
        if any(r is not None for r in regs) and track.sparsify.epochs == 0:
            raise PlanError("regularizers", f"track {track.id} has no sparse-training budget (sparsify.epochs is 0)")
        if self.reg_hyperparameters and all(r is None for r in regs):
            raise PlanError("reg_hyperparameters", "regularizer hyperparameters given without a regularizer")
        common = dict(runner=self.runner, out=self.out, data_root=self.data_root, cache_dir=self.cache_dir,
                      device=self.device, call_timeout=self.call_timeout, save_models=self.save_models,
                      hyperparameters=dict(self.hyperparameters), reg_hyperparameters=dict(self.reg_hyperparameters))
        specs = [RunSpec(track=track, method=m, regularizer=r, speedup=t, seed=s, **common)
                 for m in methods for r in regs for t in targets for s in seeds]
        for spec in specs:
            attempt("hyperparameters", resolved_hyperparameters, spec.method, spec.hyperparameters)
            if spec.regularizer is not None:
                attempt("reg_hyperparameters", resolved_hyperparameters, spec.regularizer, spec.reg_hyperparameters)
        slurm = None
        if self.executor == "slurm":
            from harness.orchestration.cluster import load_slurm_options
            slurm = attempt("slurm_config", load_slurm_options, self.slurm_config)
        return ResolvedPlan(self, track, targets, seeds, methods, specs, slurm)


@dataclass
class ResolvedPlan:
    plan: Plan
    track: TrackConfig
    targets: list[float]
    seeds: list[int]
    methods: list
    specs: list = field(default_factory=list)
    slurm: Optional[object] = None
