"""The pages: server-rendered from the same functions the JSON API answers with; their scripts
(``static/app.js``) call the API for everything that changes state or updates live."""

from __future__ import annotations

import json
from collections import defaultdict
from typing import Optional
from urllib.parse import quote, urlencode

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.templating import Jinja2Templates
from typing_extensions import Annotated

from harness.web import api, charts
from harness.web.auth import Principal
from harness.web.boards import board, curves, pareto
from harness.web.app import HERE

router = APIRouter(include_in_schema=False)
templates = Jinja2Templates(directory=HERE / "templates")
STATUS_ORDER = ["running", "queued", "ok", "failed", "cancelled", "interrupted", "not run"]


class LoginNeeded(Exception):
    pass


def _who(request: Request) -> Optional[Principal]:
    auth = request.app.state.auth
    auth.check_host(request)
    return auth.identify(request)


def _render(request: Request, name: str, who: Principal, **context) -> HTMLResponse:
    platform = request.app.state.platform
    return templates.TemplateResponse(request, name, {
        "who": who, "csrf": platform.auth.csrf_token(who.name), "local_owner": platform.cfg.local_owner,
        "auth_open": platform.auth.open, "fmt": _fmt, "pct": _pct, **context})


def _fmt(x, spec: str = ".2f", none: str = "–") -> str:
    return none if x is None else format(x, spec)


def _pct(x, none: str = "–") -> str:
    return none if x is None else f"{100 * x:.1f}%"


def page_user(request: Request) -> Principal:
    """FastAPI dependency of the pages: the user, or a redirect to the login page."""
    who = _who(request)
    if who is None:
        raise LoginNeeded(request.url.path + (f"?{request.url.query}" if request.url.query else ""))
    return who


Who = Annotated[Principal, Depends(page_user)]


def login_redirect(request: Request, exc: LoginNeeded) -> RedirectResponse:
    return RedirectResponse(f"/login?next={quote(str(exc))}", status_code=303)


@router.get("/login", response_class=HTMLResponse)
def login_page(request: Request, next: str = "/"):
    if not next.startswith("/") or next.startswith("//"):
        next = "/"
    return templates.TemplateResponse(request, "login.html", {"who": None, "csrf": "", "next": next,
                                                              "local_owner": False, "auth_open": False})


@router.get("/", response_class=HTMLResponse)
def index(request: Request, who: Who):
    platform = request.app.state.platform
    records = list(platform.store.records().values())
    by_track = defaultdict(list)
    for r in records:
        by_track[r.track.id].append(r)
    from harness.tracks import registry
    reg = registry()
    tracks = []
    for tid in sorted(set(reg.names()) | set(by_track)):
        rs = by_track.get(tid, [])
        top = None
        if rs:
            b = board(rs, tid)
            top = next((e for e in b.entries if e.rank == 1), None)
        t = reg.get(tid) if tid in reg.names() else None
        tracks.append({"id": tid, "description": t.description if t else "(not a registered track)",
                       "model": t.model.name if t else rs[0].model, "dataset": t.dataset.name if t else rs[0].dataset,
                       "ok": sum(r.status == "ok" for r in rs), "not_ok": sum(r.status != "ok" for r in rs),
                       "methods": len({r.method.id for r in rs}), "top": top})
    plans = api.list_plans(request, who)
    recent = [api._run_summary(r) for r in sorted(records, key=lambda r: r.finished_at, reverse=True)[:12]]
    return _render(request, "index.html", who, tracks=tracks, plans=plans[:10], recent=recent)


@router.get("/new", response_class=HTMLResponse)
def builder(request: Request, who: Who, track: Optional[str] = None):
    tracks = api.tracks(request, who)
    methods = api.methods(request, who)
    return _render(request, "builder.html", who, tracks=tracks, chosen=track or "digits-resnet18",
                   importance=[m for m in methods if "importance" in m["provides"]],
                   regularizers=[m for m in methods if "regularizer" in m["provides"]],
                   tracks_json=json.dumps({t["id"]: t for t in tracks}))


@router.get("/plans", response_class=HTMLResponse)
def plans_page(request: Request, who: Who):
    return _render(request, "plans.html", who, plans=api.list_plans(request, who))


@router.get("/plans/{plan_id}", response_class=HTMLResponse)
def plan_page(request: Request, who: Who, plan_id: str):
    out = api.get_plan(plan_id, request, who)
    platform = request.app.state.platform
    log = api._read_log(platform.queue.log_path(plan_id), 0)
    return _render(request, "plan.html", who, plan=out.plan, runs=out.runs, counts=out.counts, log=log["text"],
                   may_cancel=who.admin or who.name == out.plan.owner)


@router.get("/runs/{key}", response_class=HTMLResponse)
def run_page(request: Request, who: Who, key: str):
    run = api.get_run(key, request, who)
    record = run["record"]
    rec = request.app.state.platform.store.record(key)
    layers = [(name, before, after) for name, (before, after) in (rec.layer_channels.items() if rec else [])]
    plans = [request.app.state.platform.queue.get(p) for p in run["plans"]]
    return _render(request, "run.html", who, run=run, record=record, rec=rec,
                   channels_svg=charts.channel_bars(layers), plans=plans,
                   record_json=json.dumps(record, indent=2) if record else "",
                   live=run["status"] in ("queued", "running"))


@router.get("/tracks/{track}", response_class=HTMLResponse)
def board_page(request: Request, who: Who, track: str, setting: Optional[str] = None,
               view: str = "average", importance: Annotated[Optional[list[str]], Query()] = None,
               regularizer: Annotated[Optional[list[str]], Query()] = None):
    records = [r for r in request.app.state.platform.store.records().values() if r.track.id == track]
    if not records:
        raise HTTPException(404, f"no records of track {track!r} yet")
    b = board(records, track, setting, view, importance, regularizer)
    lines = curves(records, track, b.setting, importance, regularizer)
    series = {name: [(ach or s, mean, ci, f"{s:g}x target, {ach or s:.2f}x achieved: {mean:.2f}"
                      + (f" ± {ci:.2f} (95% CI)" if ci else " (n=1)")) for ach, mean, ci, s, _ in pts]
              for name, pts in lines.items()}
    speed_svg = charts.line_chart(series, "achieved MACs speedup (log scale)", f"final {b.metric}")
    cells = [(name, lat, mean, s) for name, pts in lines.items() for _, mean, _, s, lat in pts if lat is not None]
    front_idx = pareto([(c[1], c[2]) for c in cells])
    points = [(name, lat, mean, f"{s:g}x: latency speedup {lat:.2f}x, {b.metric} {mean:.2f}", None)
              for name, lat, mean, s in cells]
    pareto_svg = charts.scatter_chart(points, [(cells[i][1], cells[i][2]) for i in front_idx],
                                      "measured latency speedup, batch 1 (x)", f"final {b.metric}")
    front = [{"name": cells[i][0], "speedup": cells[i][3], "latency": cells[i][1], "final": cells[i][2]}
             for i in front_idx]
    views = ["average"] + [f"{s:g}x" for s in b.speedups]

    def link(**changes) -> str:
        q = {"setting": b.setting, "view": b.view, "importance": importance or [], "regularizer": regularizer or []}
        q.update(changes)
        return f"/tracks/{track}?" + urlencode(q, doseq=True)

    return _render(request, "board.html", who, b=b, views=views, link=link, speed_svg=speed_svg,
                   pareto_svg=pareto_svg, front=front, importance=importance or [], regularizer=regularizer or [],
                   n_records=len(records), settings=b.settings)


@router.get("/compare", response_class=HTMLResponse)
def compare_page(request: Request, who: Who, runs: str = ""):
    keys = [k for k in runs.split(",") if k]
    data = api.compare(request, who, ",".join(keys))["runs"] if len(keys) >= 2 else []
    store = request.app.state.platform.store
    recs = [store.record(k) for k in keys] if data else []
    layer_names = list(dict.fromkeys(n for r in recs for n in r.layer_channels))
    return _render(request, "compare.html", who, runs=recs, layer_names=layer_names, keys=keys)


@router.get("/uploads", response_class=HTMLResponse)
def uploads_page(request: Request, who: Who):
    uploads = request.app.state.platform.uploads
    cfg = request.app.state.platform.cfg
    return _render(request, "uploads.html", who, methods=uploads.methods(), models=uploads.models(), cfg=cfg)


@router.get("/api-docs", response_class=HTMLResponse)
def api_docs(request: Request, who: Who):
    spec = request.app.openapi()
    ops = []
    for path, item in spec["paths"].items():
        for method, op in item.items():
            params = [{"name": p["name"], "in": p["in"], "required": p.get("required", False),
                       "description": p.get("description", "") or p.get("schema", {}).get("description", "")}
                      for p in op.get("parameters", [])]
            body = op.get("requestBody", {}).get("content", {})
            body_ref = next((v.get("schema", {}).get("$ref", "").rsplit("/", 1)[-1] or
                             v.get("schema", {}).get("type", "") for v in body.values()), "")
            ops.append({"method": method.upper(), "path": path, "summary": op.get("summary", ""),
                        "description": op.get("description", ""), "tag": (op.get("tags") or ["other"])[0],
                        "params": params, "body": body_ref,
                        "responses": {k: v.get("description", "") for k, v in op.get("responses", {}).items()}})
    schemas = {name: s for name, s in spec.get("components", {}).get("schemas", {}).items()
               if name in {"PlanRequest", "PlanOut", "PlanRecord", "DryRun", "Me", "UploadedMethod", "UploadedModel"}}
    return _render(request, "api_docs.html", who, ops=ops, schemas=schemas, description=spec["info"]["description"])

