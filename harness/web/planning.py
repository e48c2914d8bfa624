"""The task builder's request -> the same validated plan the CLI builds.

A web user chooses what to run (:class:`PlanRequest`: the track, methods, regularizers, speedups,
seeds, strategy, runner...); the server fixes where and how (store, checkpoint cache, data root,
executor, workers). :func:`resolve_request` applies the server's policy, builds the CLI's
:class:`Plan` from both and resolves it (a :class:`PlanError` names the field at fault, with the
CLI's one-line message).

The policy of a shared server (anything but its owner on loopback; see the README's threat model):
a plan names things, never code or files. Before anything is read, imported or built, dry runs
included, every name is checked against what the server offers: registered tracks, datasets and
methods; models that are registered names, ``torchvision:<name>``, ``timm:<name>`` or ``hf:<type>``
(library builders), or ``upload:<id>`` (uploaded weights that passed their check); no value
anywhere in the plan that looks like a path. ``file:`` and ``<module>:<factory>`` models would
unpickle a file or import a module in the server: they are refused with a one-line 422 naming the
field. Uploaded methods run only under docker.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Literal, Optional, Union

from pydantic import Field, StringConstraints

from harness.errors import HarnessError
from harness.web.config import ServerConfig
from harness.plan import Plan, PlanError, ResolvedPlan
from specs.base import Strict
from specs.track import Strategy

if TYPE_CHECKING:
    from harness.protocol.run import RunSpec
    from harness.web.uploads import Uploads

UPLOAD = "upload:"
#: model reference kinds a shared server builds: library builders, with no arguments from the request
LIBRARY_MODELS = ("torchvision", "timm", "hf")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")
Name = Annotated[str, StringConstraints(max_length=200)]
#: a hyperparameter's value: strings are short (a choice, not a document)
WebScalar = Union[bool, int, float, Annotated[str, StringConstraints(max_length=200)]]

__all__ = ["PlanError", "PlanRequest", "Resolved", "resolve_request"]


class PlanRequest(Strict):
    """What a user asks the platform to run (``POST /api/plans``). The fields mean what the CLI's
    flags of the same names mean (``pbench-harness sweep --help``)."""

    label: str = Field("", max_length=200, description="a name for the plan (shown in the queue)")
    track: Optional[Name] = Field(None, description="registered track id (see GET /api/tracks)")
    model: Optional[Name] = Field(None, description="model: a registered name, torchvision:<name>, timm:<name>, "
                                                    "hf:<model_type> or upload:<id> (uploaded weights); with dataset, "
                                                    "selects the pair's track")
    dataset: Optional[Name] = Field(None, description="registered dataset name")
    methods: list[Name] = Field(default_factory=lambda: ["all"], min_length=1, max_length=64,
                                description="importance method ids, 'all', or upload:<name> (an uploaded method)")
    regularizers: list[Name] = Field(default_factory=lambda: ["-"], min_length=1, max_length=16,
                                     description="regularizer ids paired with every method; '-' = none")
    speedups: Optional[list[float]] = Field(None, min_length=1, max_length=32,
                                            description="MACs speedup targets (default: the track's)")
    seeds: Optional[list[int]] = Field(None, min_length=1, max_length=32, description="default: the track's")
    strategy: Optional[Strategy] = Field(None, description="override the track's pruning strategy")
    runner: Literal["inprocess", "subprocess", "docker"] = "subprocess"
    device: Literal["cpu", "cuda"] = "cpu"
    hyperparameters: dict[Annotated[str, StringConstraints(max_length=64)], WebScalar] = Field(
        default_factory=dict, max_length=64)
    reg_hyperparameters: dict[Annotated[str, StringConstraints(max_length=64)], WebScalar] = Field(
        default_factory=dict, max_length=64)
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


def _method_names(field_name: str, names: list[str], uploads: Optional["Uploads"], used: dict) -> list[str]:
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
        else:
            out.append(name)
    return out


def check_model_name(model: str, field_name: str = "model") -> None:
    """A shared server's model references (see the module docstring); :class:`PlanError` otherwise."""
    kind, sep, target = model.partition(":")
    if sep and kind == "upload":
        return  # checked against the uploads when the plan is built
    from harness.models.refs import kind_of
    if sep and (kind not in LIBRARY_MODELS or not _NAME.match(target) or kind_of(model)[0] != kind):
        # (a kind this harness does not build would be read as <module>:<factory>: an import)
        raise PlanError(field_name, f"{model[:80]!r}: a shared server builds registered models, "
                                    f"{', '.join(k + ':<name>' for k in LIBRARY_MODELS)} or upload:<id> (uploaded "
                                    f"weights); file: and <module>:<factory> models run code and are refused")
    if not sep and not _NAME.match(kind):
        raise PlanError(field_name, f"{model[:80]!r}: not a model name")


def check_dataset_name(dataset: str) -> None:
    from harness.data import DATASETS
    if dataset not in DATASETS.names():
        raise PlanError("dataset", f"{dataset[:80]!r}: not a registered dataset ({', '.join(DATASETS.names())})")


def _refuse_code_and_paths(req: PlanRequest) -> None:
    """A shared server's policy on the names in ``req`` (see the module docstring): raises
    :class:`PlanError` before anything is read, imported or built."""
    from harness.methods import discover
    from harness.tracks import registry

    if req.track is not None and req.track not in registry().names():
        raise PlanError("track", f"{req.track[:80]!r}: a shared server runs registered tracks (GET /api/tracks), "
                                 f"not track files")
    if req.dataset is not None:
        check_dataset_name(req.dataset)
    if req.model is not None:
        check_model_name(req.model)
    methods = set(discover().names())
    for field_name, names in (("methods", req.methods), ("regularizers", req.regularizers)):
        for name in names:
            name = name.strip()
            if name not in methods and name not in ("all", "-") and not name.startswith(UPLOAD):
                raise PlanError(field_name, f"{name[:80]!r}: a shared server takes method ids (GET /api/methods) "
                                            f"or upload:<name>, not paths")
    for field_name in ("hyperparameters", "reg_hyperparameters"):
        for key, value in getattr(req, field_name).items():
            if isinstance(value, str) and _looks_like_path(value):
                raise PlanError(field_name, f"{key}: {value[:80]!r} looks like a path; a shared server takes no "
                                            f"paths in plans")


def _upload_model(req: PlanRequest, uploads: Optional["Uploads"]) -> dict:
    """``model: upload:<id>``: the plan fields that run the upload's derived track (its weights are the
    base checkpoint)."""
    name = req.model[len(UPLOAD):]
    up = uploads.model(name) if uploads is not None else None
    if up is None:
        raise PlanError("model", f"no uploaded model {name[:80]!r} (see GET /api/uploads)")
    if req.track is not None:
        raise PlanError("track", "an uploaded model runs on its own derived track: give model upload:<id> without "
                                 "track")
    if req.dataset is not None and req.dataset != up.dataset:
        raise PlanError("dataset", f"uploaded model {up.id} was checked on {up.dataset}, not {req.dataset}")
    return dict(track=str(uploads.track_file(up)), model=None, dataset=None)


def resolve_request(req: PlanRequest, cfg: ServerConfig, uploads: Optional["Uploads"] = None,
                    check_device: bool = True) -> Resolved:
    """The plan of ``req`` on this server, resolved; raises :class:`PlanError` (``.field`` = the form field)."""
    from harness.store import run_key_of
    if not cfg.local_owner:
        _refuse_code_and_paths(req)
    used: dict = {}
    methods = _method_names("methods", req.methods, uploads, used)
    regularizers = _method_names("regularizers", req.regularizers, uploads, used)
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
    if req.model is not None and req.model.startswith(UPLOAD):
        fields.update(_upload_model(req, uploads))
    fields.update(methods=methods, regularizers=regularizers, out=cfg.store, data_root=cfg.data_root,
                  cache_dir=cfg.cache_dir, executor=cfg.executor, jobs=cfg.jobs, slurm_config=cfg.slurm_config)
    resolved = Plan.build(**fields).resolve()
    specs = resolved.specs
    if len(specs) > cfg.max_plan_runs:
        raise PlanError("speedups" if req.speedups else None,
                        f"this plan has {len(specs)} runs; a plan may have at most {cfg.max_plan_runs} on this "
                        f"server (fewer methods, speedups or seeds)")
    from harness.protocol.run import with_bases
    try:  # a shared server never trains a base inside a request: the operator pretrains it
        specs = with_bases(specs, train=cfg.local_owner)
    except HarnessError as e:
        raise PlanError("model" if req.model else "track", str(e)) from None
    try:
        keys = [run_key_of(spec) for spec in specs]
    except HarnessError as e:  # e.g. the docker runner and no engine or image
        raise PlanError("runner", str(e)) from None
    return Resolved(resolved, specs, keys)
