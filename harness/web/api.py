"""The JSON API. Every page of the platform is built on these endpoints (OpenAPI: ``/openapi.json``)."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from typing import Annotated, Optional

from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response
from fastapi.responses import FileResponse
from fastapi.sse import EventSourceResponse, ServerSentEvent
from starlette.requests import ClientDisconnect
from pydantic import BaseModel, Field

from harness.errors import HarnessError
from harness.labels import label_of
from harness.orchestration.events import events_path, read_events
from harness.web.auth import COOKIE, Principal, viewer
from harness.web.boards import Leaderboard, board
from harness.web.planning import PlanError, PlanRequest, check_dataset_name, check_model_name, resolve_request
from harness.web.queue import ACTIVE, PlanRecord, PlanRun, now
from harness.web.runs import valid_key
from harness.web.uploads import UploadedMethod, UploadedModel, UploadError, receive_form

class ErrorOut(BaseModel):
    """Every error answer: one line, and the plan field at fault where there is one."""

    error: str
    field: Optional[str] = None


#: what any operation may answer besides its own results (each route adds its own)
ERRORS = {400: {"model": ErrorOut, "description": "bad request (a Host this server does not answer to, a broken body)"},
          401: {"model": ErrorOut, "description": "not logged in"},
          403: {"model": ErrorOut, "description": "not allowed (CSRF, a foreign Origin, someone else's plan)"},
          404: {"model": ErrorOut, "description": "no such plan, run or file"},
          413: {"model": ErrorOut, "description": "the request body is too large"},
          422: {"model": ErrorOut, "description": "invalid input: {error, field}"}}
router = APIRouter(prefix="/api", responses=ERRORS)
PLAN_ID = re.compile(r"^\d{8}-\d{6}-[0-9a-f]{6}$")
#: the largest byte offset into a log (a file offset beyond any log this server writes)
MAX_OFFSET = 2**53
User = Annotated[Principal, Depends(viewer)]


def P(request: Request):
    return request.app.state.platform


# -- who -----------------------------------------------------------------------------------------
class Me(BaseModel):
    user: str
    admin: bool
    csrf: str = Field(description="send as X-PBench-CSRF on state-changing requests made with the cookie")
    local_owner: bool = Field(description="the server runs locally for its owner (uploaded methods may run "
                                          "outside docker)")


class Login(BaseModel):
    token: str = Field(min_length=1, max_length=512)


@router.get("/me", response_model=Me, tags=["session"])
def me(request: Request, who: User) -> Me:
    """The user this request is made as, and the CSRF token its pages send."""
    platform = P(request)
    return Me(user=who.name, admin=who.admin, csrf=platform.auth.csrf_token(who.name),
              local_owner=platform.cfg.local_owner)


@router.post("/session", response_model=Me, tags=["session"])
async def login(body: Login, request: Request, response: Response) -> Me:
    """Exchange a token for a session cookie (HttpOnly, SameSite=Strict)."""
    platform = P(request)
    platform.auth.check_host(request)
    origin = request.headers.get("origin")
    if origin and origin != "null" and origin.split("://", 1)[-1] != request.headers.get("host"):
        raise HTTPException(403, f"cross-origin login from {origin} refused")
    user = platform.auth.by_token(body.token)
    if user is None:
        await asyncio.sleep(0.5)  # slow down guessing (without holding a worker thread)
        raise HTTPException(401, "unknown token")
    response.set_cookie(COOKIE, platform.auth.sessions.open(user.name), max_age=int(platform.cfg.session_hours * 3600),
                        httponly=True, samesite="strict", secure=platform.cfg.https or request.url.scheme == "https")
    return Me(user=user.name, admin=user.admin, csrf=platform.auth.csrf_token(user.name),
              local_owner=platform.cfg.local_owner)


@router.delete("/session", status_code=204, tags=["session"])
def logout(request: Request, who: User) -> Response:
    """End the session: the server forgets it (the old cookie answers 401 from now on)."""
    cookie = request.cookies.get(COOKIE)
    if cookie:
        P(request).auth.sessions.close(cookie)
    response = Response(status_code=204)
    response.delete_cookie(COOKIE)
    return response


# -- what can run --------------------------------------------------------------------------------
@router.get("/tracks", tags=["catalog"])
def tracks(request: Request, who: User) -> list[dict]:
    """The registered tracks, with how many records the store holds for each."""
    from harness.tracks import registry
    records = P(request).store.records().values()
    out = []
    reg = registry()
    for name in reg.names():
        t = reg.get(name)
        out.append({"id": t.id, "description": t.description, "model": t.model.name, "dataset": t.dataset.name,
                    "metric": t.metric, "strategy": t.pruning.strategy, "speedups": t.pruning.speedups,
                    "seeds": t.seeds, "recipes": sorted(t.recipes), "sparsify_epochs": t.sparsify.epochs,
                    "retrain_epochs": t.retrain.epochs,
                    "records": sum(r.track.id == t.id for r in records)})
    return out


@router.get("/methods", tags=["catalog"])
def methods(request: Request, who: User) -> list[dict]:
    """The reference methods and the uploaded ones (``upload:<name>``) that passed their checks."""
    from harness.methods import discover
    reg = discover()
    out = []
    for name in reg.names():
        m = reg.get(name).manifest
        out.append({"id": m.id, "ref": m.id, "version": m.version, "name": m.name, "provides": list(m.provides),
                    "observations": list(m.observations), "source": "reference",
                    "hyperparameters": {k: h.model_dump(mode="json") for k, h in m.hyperparameters.items()}})
    for up in P(request).uploads.methods():
        if up.status == "passed":
            out.append({"id": up.id, "ref": f"upload:{up.name}", "version": up.version, "name": up.name,
                        "provides": up.provides, "observations": [], "source": f"upload by {up.owner}",
                        "runner": up.runner, "hyperparameters": {}})
    return out


# -- plans ---------------------------------------------------------------------------------------
class PlanOut(BaseModel):
    plan: PlanRecord
    runs: list[dict] = Field(description="per run: key, name, speedup, seed, status, stage, done, total, final")
    counts: dict[str, int]


def _plan_out(platform, plan: PlanRecord) -> PlanOut:
    runs, counts = [], {}
    for run in plan.runs:
        state = platform.queue.state(run.key)
        final = state.record.metric.final if state.record is not None else None
        error = state.record.error if state.record is not None else None
        runs.append({**run.model_dump(), **state.summary(), "final": final, "error": error})
        counts[state.status] = counts.get(state.status, 0) + 1
    return PlanOut(plan=plan, runs=runs, counts=counts)


class DryRun(BaseModel):
    runs: int
    new: int = Field(description="runs without a record yet (the others are skipped)")
    track: str
    targets: list[float]
    seeds: list[int]


@router.post("/plans", status_code=201, response_model=PlanOut | DryRun, tags=["plans"],
             responses={422: {"model": ErrorOut, "description": "invalid plan: {error, field}"},
                        429: {"model": ErrorOut, "description": "the user's queue limit"}})
def submit_plan(body: PlanRequest, request: Request, who: User,
                dry_run: Annotated[bool, Query(description="validate and count, queue nothing")] = False):
    """Validate a plan exactly as the CLI does and queue it (the sweep runs it; recorded runs are skipped)."""
    platform = P(request)
    resolved = resolve_request(body, platform.cfg, platform.uploads)
    records = platform.store.records()
    if dry_run:
        r = resolved.resolved
        return DryRun(runs=len(resolved.specs), new=sum(k not in records for k in resolved.keys), track=r.track.id,
                      targets=r.targets, seeds=r.seeds)
    runs = [PlanRun(key=k, name=label_of(s), track=s.track.id,
                    speedup=s.speedup, seed=s.seed, strategy=s.track.pruning.strategy)
            for k, s in zip(resolved.keys, resolved.specs)]
    limit = who.max_queued_runs if who.max_queued_runs is not None else platform.cfg.max_queued_runs
    plan = platform.queue.submit(who.name, body, runs, limit)
    return _plan_out(platform, plan)


@router.get("/plans", tags=["plans"])
def list_plans(request: Request, who: User) -> list[dict]:
    """Every plan, newest first, with its run counts by status."""
    platform = P(request)
    out = []
    for plan in platform.queue.list():
        counts: dict[str, int] = {}
        for run in plan.runs:
            status = platform.queue.state(run.key).status
            counts[status] = counts.get(status, 0) + 1
        out.append({"id": plan.id, "owner": plan.owner, "label": plan.request.label, "state": plan.state,
                    "created_at": plan.created_at, "finished_at": plan.finished_at, "error": plan.error,
                    "runs": len(plan.runs), "counts": counts,
                    "track": plan.runs[0].track if plan.runs else plan.request.track})
    return out


def _plan(platform, plan_id: str) -> PlanRecord:
    plan = platform.queue.get(plan_id) if PLAN_ID.match(plan_id) else None
    if plan is None:
        raise HTTPException(404, f"no plan {plan_id!r}")
    return plan


@router.get("/plans/{plan_id}", response_model=PlanOut, tags=["plans"])
def get_plan(plan_id: str, request: Request, who: User) -> PlanOut:
    platform = P(request)
    return _plan_out(platform, _plan(platform, plan_id))


@router.get("/plans/{plan_id}/log", tags=["plans"])
def plan_log(plan_id: str, request: Request, who: User, offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0
             ) -> dict:
    """The plan worker's log (the sweep's per-run lines) from byte ``offset``."""
    platform = P(request)
    _plan(platform, plan_id)
    return read_log(platform, platform.queue.log_path(plan_id), offset)


def _redacted(platform, data):
    """``data`` (JSON) without the server's paths: event streams are not answered through the middleware."""
    return data if platform.cfg.local_owner else json.loads(platform.redact(json.dumps(data)))


def read_log(platform, path: Path, offset: int, limit: int = 256 * 1024) -> dict:
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            data = f.read(limit)
    except FileNotFoundError:
        return {"text": "", "offset": offset}
    cut = data.rfind(b"\n") + 1 if len(data) == limit else len(data)
    return {"text": platform.redact(data[:cut].decode(errors="replace")), "offset": offset + cut}


def _may_cancel(who: Principal, owners: set[str]) -> None:
    if not who.admin and who.name not in owners:
        raise HTTPException(403, f"only {', '.join(sorted(owners)) or 'its owner'} or an admin may cancel this")


@router.post("/plans/{plan_id}/cancel", response_model=PlanOut, tags=["plans"])
def cancel_plan(plan_id: str, request: Request, who: User) -> PlanOut:
    """Cancel a plan: queued, it never runs; running, no further run starts and its runs in flight are
    recorded ``cancelled``."""
    platform = P(request)
    plan = _plan(platform, plan_id)
    _may_cancel(who, {plan.owner})
    return _plan_out(platform, platform.queue.cancel_plan(plan_id, who.name))


@router.get("/plans/{plan_id}/events", response_class=EventSourceResponse, tags=["plans"])
async def plan_events(plan_id: str, request: Request, who: User):
    """Server-sent events: ``run`` (a run's status/stage changed), ``log`` (new log text), ``plan`` (its
    state changed); the stream ends after the plan has ended."""
    platform = P(request)
    _plan(platform, plan_id)
    seen: dict[str, tuple] = {}
    offset, last_state = 0, None
    while True:
        plan = platform.queue.get(plan_id)
        out = await asyncio.to_thread(_plan_out, platform, plan)
        for run in out.runs:
            sig = (run["status"], run["stage"], run["done"], run["total"])
            if seen.get(run["key"]) != sig:
                seen[run["key"]] = sig
                yield ServerSentEvent(event="run", data=_redacted(platform, run))
        log = read_log(platform, platform.queue.log_path(plan_id), offset)
        if log["text"]:
            offset = log["offset"]
            yield ServerSentEvent(event="log", data=log["text"])
        if plan.state != last_state:
            last_state = plan.state
            yield ServerSentEvent(event="plan", data={"state": plan.state, "error": plan.error,
                                                      "counts": out.counts})
        if plan.state not in ACTIVE:
            yield ServerSentEvent(event="done", data={"state": plan.state})
            return
        await asyncio.sleep(max(0.25, platform.cfg.poll_s))


# -- runs ----------------------------------------------------------------------------------------
def _key(key: str) -> str:
    if not valid_key(key):
        raise HTTPException(404, "a run id is its 64-hex-digit run key")
    return key


@router.get("/runs", tags=["runs"])
def list_runs(request: Request, who: User, track: Optional[str] = None,
              limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> list[dict]:
    """Recorded runs, latest first (optionally of one track)."""
    records = [r for r in P(request).store.records().values() if track is None or r.track.id == track]
    records.sort(key=lambda r: r.finished_at, reverse=True)
    return [_run_summary(r) for r in records[:limit]]


def _run_summary(r) -> dict:
    return {"key": r.run_key, "status": r.status, "track": r.track.id, "method": r.method.id,
            "regularizer": r.regularizer.id if r.regularizer else None, "speedup": r.speedup.target,
            "achieved": r.speedup.achieved, "seed": r.seed, "strategy": r.strategy, "final": r.metric.final,
            "delta": r.metric.delta, "error": r.error, "finished_at": r.finished_at}


@router.get("/runs/{key}", tags=["runs"])
def get_run(key: str, request: Request, who: User) -> dict:
    """A run: its status and stage (live), its plans, the record once written, the files to download.
    Live events: ``GET /api/runs/{key}/events``."""
    platform = P(request)
    state = platform.queue.state(_key(key))
    plans = platform.queue.plans_of_run(key)
    if state.record is None and not plans and not state.events:
        raise HTTPException(404, f"no run {key[:12]}… in this store")
    record = state.record
    files = {}
    if record is not None:
        for name in ("result.json", *record.files.values()):
            if platform.store.file(key, name) is not None:
                files[name] = f"/api/runs/{key}/files/{name}"
    info = next((r for p in plans for r in p.runs if r.key == key), None)
    return {**state.summary(), "plans": [p.id for p in plans], "run": info.model_dump() if info else None,
            "record": record.model_dump(mode="json") if record else None, "files": files,
            "events_url": f"/api/runs/{key}/events"}


@router.get("/runs/{key}/events", response_class=EventSourceResponse, tags=["runs"])
async def run_events(key: str, request: Request, who: User,
                     offset: Annotated[int, Query(ge=0, le=MAX_OFFSET, description="byte offset to resume from")] = 0):
    """Server-sent events of a run, one per line of its event log (``start``, ``progress`` with stage, done,
    total, loss, lr, macs, speedup, base/pruned/final metric; ``end``); each carries ``t`` (unix s) and its
    ``id`` is the byte offset to resume from (``Last-Event-ID``). A final ``done`` event closes the stream."""
    platform = P(request)
    path = events_path(platform.store.root, _key(key))
    last = request.headers.get("last-event-id")
    if last and last.isdigit() and len(last) < 19:
        offset = int(last)
    idle = 0.0
    while True:
        events, new = await asyncio.to_thread(read_events, path, offset)
        for i, event in enumerate(events):
            yield ServerSentEvent(event=event.get("kind", "message"), data=_redacted(platform, event),
                                  id=str(new) if i == len(events) - 1 else None)
        offset = new
        if events:
            idle = 0.0
        state = await asyncio.to_thread(platform.queue.state, key)
        if state.status not in ("queued", "running"):
            yield ServerSentEvent(event="done", data={"status": state.status})
            return
        if await request.is_disconnected():
            return
        idle += platform.cfg.poll_s
        if idle >= 15:
            idle = 0.0
            yield ServerSentEvent(comment="keep-alive")
        await asyncio.sleep(platform.cfg.poll_s)


@router.post("/runs/{key}/cancel", tags=["runs"])
def cancel_run(key: str, request: Request, who: User) -> dict:
    """Cancel one run for your plans: it stops and is recorded ``cancelled`` once no other user's plan wants it
    (an admin stops it at once); a finished run is not changed."""
    platform = P(request)
    state = platform.queue.state(_key(key))
    if state.status not in ("queued", "running"):
        raise HTTPException(409, f"the run is {state.status}: nothing to cancel")
    _may_cancel(who, {p.owner for p in platform.queue.plans_of_run(key) if p.state in ACTIVE})
    return {"key": key, "result": platform.queue.cancel_run(key, who.name, admin=who.admin)}


@router.get("/runs/{key}/files/{name}", tags=["runs"], response_class=FileResponse)
def run_file(key: str, name: str, request: Request, who: User):
    """Download ``result.json`` or a model the record lists (``sparse.pt``, ``pruned.pt``, ``final.pt``)."""
    path = P(request).store.file(_key(key), name)
    if path is None:
        raise HTTPException(404, f"run {key[:12]}… has no file {name!r}")
    media = "application/json" if name.endswith(".json") else "application/octet-stream"
    return FileResponse(path, media_type=media, filename=f"{key[:12]}-{name}")


# -- leaderboards and comparisons ----------------------------------------------------------------
@router.get("/leaderboards/{track}", tags=["leaderboards"], response_model=Leaderboard,
            responses={404: {"model": ErrorOut, "description": "no records of the track"},
                       422: {"model": ErrorOut, "description": "an unknown setting or a view that is not a speedup"}})
def leaderboard(track: str, request: Request, who: User,
                setting: Annotated[Optional[str], Query(description="strategy[ · retrain recipe]")] = None,
                view: Annotated[str, Query(description="'average' or a speedup, e.g. '4x'")] = "average",
                importance: Annotated[Optional[list[str]], Query(description="show only these methods")] = None,
                regularizer: Annotated[Optional[list[str]], Query(description="show only these ('-': none)")] = None
                ) -> Leaderboard:
    """One leaderboard, ranked as ``pbench-harness leaderboard`` ranks (harness.views.leaderboard): one section per
    base checkpoint and track version (never pooled; ``warnings`` names them), per entry n, mean ± 95% CI of the
    final, pruned and Pruned+BN metrics and its tie rank in the cell; the Average view is the mean rank over the
    speedups. Filters hide entries without changing any rank."""
    records = list(P(request).store.records().values())
    if not any(r.track.id == track for r in records):
        raise HTTPException(404, f"no records of track {track!r}")
    try:
        return board(records, track, setting, view, importance, regularizer)
    except HarnessError as e:
        raise HTTPException(422, str(e)) from None


@router.get("/compare", tags=["leaderboards"])
def compare(request: Request, who: User, runs: Annotated[str, Query(description="comma-separated run keys")]):
    """Two or more recorded runs side by side (their full records)."""
    keys = [k for k in runs.split(",") if k]
    if len(keys) < 2 or len(keys) > 12:
        raise HTTPException(422, "compare 2 to 12 runs: ?runs=KEY1,KEY2")
    store = P(request).store
    out = []
    for k in keys:
        record = store.record(_key(k))
        if record is None:
            raise HTTPException(404, f"no recorded run {k[:12]}…")
        out.append(record.model_dump(mode="json"))
    return {"runs": out}


# -- uploads -------------------------------------------------------------------------------------
def _form_body(fields: dict, required: list[str]) -> dict:
    """The OpenAPI description of an upload form (the body is parsed as it streams, not by FastAPI)."""
    return {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
        "type": "object", "required": ["file", *required],
        "properties": {"file": {"type": "string", "format": "binary"}, **fields}}}}}}


async def _receive(request: Request, kind: str, limit_mb: float) -> tuple[dict, str, Path, str]:
    """The upload form of ``request``, its file streamed into the uploads' ``kind`` folder (one copy, refused
    past ``limit_mb`` MB; the request body itself is capped before this: :class:`harness.web.app.BodyLimits`)."""
    dest = P(request).uploads.incoming(kind)
    try:
        fields, filename, digest, _ = await receive_form(request.stream(), request.headers.get("content-type", ""),
                                                         dest, int(limit_mb * 2**20), P(request).cfg.upload_idle_s)
    except ClientDisconnect:  # the file is gone already; nobody reads the answer
        raise UploadError("the upload was interrupted", 400) from None
    return fields, filename, dest, digest


@router.get("/uploads", tags=["uploads"])
def list_uploads(request: Request, who: User) -> dict:
    uploads = P(request).uploads
    return {"methods": [m.model_dump() for m in uploads.methods()], "models": [m.model_dump() for m in uploads.models()]}


@router.post("/uploads/models", status_code=201, response_model=UploadedModel, tags=["uploads"],
             openapi_extra=_form_body({
                 "architecture": {"type": "string", "maxLength": 200,
                                  "description": "a registered model, torchvision:<name>, timm:<name> or hf:<type>"},
                 "dataset": {"type": "string", "maxLength": 64, "description": "a registered dataset"}},
                 ["architecture", "dataset"]),
             responses={413: {"model": ErrorOut, "description": "too large"},
                        415: {"model": ErrorOut, "description": "not a multipart form"},
                        422: {"model": ErrorOut, "description": "not safetensors weights of that architecture"},
                        408: {"model": ErrorOut, "description": "the upload stalled"},
                        429: {"model": ErrorOut, "description": "too many uploads arriving or being checked"}})
async def upload_model(request: Request, who: User) -> UploadedModel:
    """Keep model weights: a ``safetensors`` file (``file``) of an ``architecture`` the harness builds, trained on
    ``dataset``. The weights must load into that architecture strictly; the answer's ``reference``
    (``upload:<id>``) is the plan's ``model``, and the weights are the base checkpoint of its runs."""
    platform = P(request)
    with platform.uploads.receive_slot(who.name):
        fields, filename, path, digest = await _receive(request, "models", platform.cfg.max_model_mb)
        try:
            architecture, dataset = (fields.get(k, "").strip() for k in ("architecture", "dataset"))
            if not architecture or not dataset:
                raise UploadError("give the architecture (e.g. torchvision:resnet18) and the dataset the weights "
                                  "were trained on (e.g. digits) beside the file")
            if architecture.startswith("upload:"):
                raise PlanError("architecture", "the architecture is a model the harness builds, not an upload")
            check_model_name(architecture, "architecture")
            check_dataset_name(dataset)
            with platform.uploads.check_slot(who.name):
                model, _ = await asyncio.to_thread(platform.uploads.add_model, path, digest, filename, architecture,
                                                   dataset, who.name, now())
        finally:
            path.unlink(missing_ok=True)
    return model


@router.post("/uploads/methods", status_code=201, response_model=UploadedMethod, tags=["uploads"],
             openapi_extra=_form_body({}, []),
             responses={409: {"model": ErrorOut, "description": "id clash"},
                        413: {"model": ErrorOut, "description": "too large"},
                        415: {"model": ErrorOut, "description": "not a multipart form"},
                        422: {"model": ErrorOut, "description": "unsafe or invalid zip, invalid manifest"},
                        408: {"model": ErrorOut, "description": "the upload stalled"},
                        429: {"model": ErrorOut, "description": "too many uploads arriving or being checked"}})
async def upload_method(request: Request, who: User) -> UploadedMethod:
    """Keep a method folder (a zip in ``file``), validate its manifest and start its conformance checks (status
    ``checking`` -> ``passed``/``failed``; on a shared server in its docker image)."""
    platform = P(request)
    with platform.uploads.receive_slot(who.name):
        _, _, path, _ = await _receive(request, "methods", platform.cfg.max_method_mb)
        try:
            up, _ = await asyncio.to_thread(platform.uploads.add_method, path, who.name, now())
        finally:
            path.unlink(missing_ok=True)
    return up
