"""The task builder's request -> the same validated plan the CLI builds.

A web user chooses what to run (:class:`PlanRequest`: the track, methods, regularizers, speedups,
seeds, strategy, runner...); the server fixes where and how (store, checkpoint cache, data root,
executor, workers). :func:`resolve_request` builds the CLI's :class:`Plan` from both, resolves it
(a :class:`PlanError` names the field at fault, with the CLI's one-line message) and applies the
server's policy: on a shared server, no file paths, and uploaded methods only under docker.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Optional

from pydantic import Field

from harness.errors import HarnessError
from harness.web.config import ServerConfig
from harness.plan import Plan, PlanError, ResolvedPlan
from specs.base import Scalar, Strict
from specs.track import Strategy

if TYPE_CHECKING:
    from harness.protocol.run import RunSpec
    from harness.web.uploads import Uploads

UPLOAD = "upload:"

__all__ = ["PlanError", "PlanRequest", "Resolved", "resolve_request"]


class PlanRequest(Strict):
    """What a user asks the platform to run (``POST /api/plans``). The fields mean what the CLI's
    flags of the same names mean (``pbench-harness sweep --help``)."""

    label: str = Field("", max_length=200, description="a name for the plan (shown in the queue)")
    track: Optional[str] = Field(None, description="registered track id (see GET /api/tracks)")
    model: Optional[str] = Field(None, description="model name: with dataset, selects the pair's track")
    dataset: Optional[str] = None
    methods: list[str] = Field(default_factory=lambda: ["all"], min_length=1, max_length=64,
                               description="importance method ids, 'all', or upload:<name> (an uploaded method)")
    regularizers: list[str] = Field(default_factory=lambda: ["-"], min_length=1, max_length=16,
                                    description="regularizer ids paired with every method; '-' = none")
    speedups: Optional[list[float]] = Field(None, min_length=1, max_length=32,
                                            description="MACs speedup targets (default: the track's)")
    seeds: Optional[list[int]] = Field(None, min_length=1, max_length=32, description="default: the track's")
    strategy: Optional[Strategy] = Field(None, description="override the track's pruning strategy")
    runner: Literal["inprocess", "subprocess", "docker"] = "subprocess"
    device: Literal["cpu", "cuda"] = "cpu"
    hyperparameters: dict[str, Scalar] = Field(default_factory=dict, max_length=64)
    reg_hyperparameters: dict[str, Scalar] = Field(default_factory=dict, max_length=64)
    call_timeout: Optional[float] = Field(None, gt=0, le=86400, description="per-call deadline for the method, s")
    save_models: bool = True
    retry_failed: bool = Field(False, description="re-run runs recorded as failed or cancelled")


@dataclass
class Resolved:
    resolved: ResolvedPlan
    specs: list["RunSpec"]
    keys: list[str]


def _looks_like_path(name: str) -> bool:
    return "/" in name or "\\" in name or name.startswith(".") or name.endswith((".yaml", ".yml", ".json"))


def _method_names(field_name: str, names: list[str], cfg: ServerConfig, uploads: Optional["Uploads"],
                  used: dict) -> list[str]:
    out = []
    for name in names:
        name = name.strip()
        if name.startswith(UPLOAD):
            if uploads is None:
                raise PlanError(field_name, "uploaded methods are not available here")
            up = uploads.method(name[len(UPLOAD):])
            if up is None:
                raise PlanError(field_name, f"no uploaded method {name[len(UPLOAD):]!r} (see GET /api/uploads)")
            if up.status != "passed":
                raise PlanError(field_name, f"uploaded method {up.name} has not passed its conformance checks "
                                            f"({up.status}: {up.detail})")
            used[str(uploads.method_dir(up))] = up
            out.append(str(uploads.method_dir(up)))
        elif _looks_like_path(name) and not cfg.local_owner:
            raise PlanError(field_name, f"{name!r}: a shared server takes method ids (GET /api/methods) or "
                                        f"upload:<name>, not paths")
        else:
            out.append(name)
    return out


def resolve_request(req: PlanRequest, cfg: ServerConfig, uploads: Optional["Uploads"] = None,
                    check_device: bool = True) -> Resolved:
    """The plan of ``req`` on this server, resolved; raises :class:`PlanError` (``.field`` = the form field)."""
    from harness.store import run_key_of
    if req.track and _looks_like_path(req.track) and not cfg.local_owner:
        raise PlanError("track", f"{req.track!r}: a shared server runs registered tracks (GET /api/tracks), "
                                 f"not track files")
    used: dict = {}
    methods = _method_names("methods", req.methods, cfg, uploads, used)
    regularizers = _method_names("regularizers", req.regularizers, cfg, uploads, used)
    if used and not cfg.local_owner and req.runner != "docker":
        raise PlanError("runner", "uploaded methods run only under the docker runner on a shared server "
                                  "(choose runner docker)")
    if check_device and cfg.executor == "local":
        from harness.protocol.distributed import require_device
        try:
            require_device(req.device)
        except HarnessError as e:
            raise PlanError("device", str(e)) from None
    fields = req.model_dump(exclude={"label"})
    fields.update(methods=methods, regularizers=regularizers, out=cfg.store, data_root=cfg.data_root,
                  cache_dir=cfg.cache_dir, executor=cfg.executor, jobs=cfg.jobs, slurm_config=cfg.slurm_config)
    resolved = Plan.build(**fields).resolve()
    specs = resolved.specs
    if len(specs) > cfg.max_plan_runs:
        raise PlanError("speedups" if req.speedups else None,
                        f"this plan has {len(specs)} runs; a plan may have at most {cfg.max_plan_runs} on this "
                        f"server (fewer methods, speedups or seeds)")
    try:
        keys = [run_key_of(spec) for spec in specs]
    except HarnessError as e:  # e.g. the docker runner and no engine or image
        raise PlanError("runner", str(e)) from None
    return Resolved(resolved, specs, keys)

