"""The pages: server-rendered from the same functions the JSON API answers with; their scripts
(``static/app.js``) call the API for everything that changes state or updates live."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Optional
from urllib.parse import quote, urlencode

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.templating import Jinja2Templates
from typing_extensions import Annotated

from harness.web import api, charts
from harness.web.auth import Principal
from harness.errors import HarnessError
from harness.views import latency as lat
from harness.views.leaderboard import FLAG
from harness.web.boards import BoardSection, board, leaders

router = APIRouter(include_in_schema=False)
HERE = Path(__file__).resolve().parent
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
        top, sections, ranked = [], 0, False
        if rs:
            b = board(rs, tid)
            top, sections = leaders(b), len(b.sections)
            ranked = any(a.mean_rank is not None for sec in b.sections for a in sec.average)
        t = reg.get(tid) if tid in reg.names() else None
        tracks.append({"id": tid, "description": t.description if t else "(not a registered track)",
                       "model": t.model.name if t else rs[0].model, "dataset": t.dataset.name if t else rs[0].dataset,
                       "ok": sum(r.status == "ok" for r in rs), "not_ok": sum(r.status != "ok" for r in rs),
                       "methods": len({r.method.id for r in rs}), "top": top, "sections": sections,
                       "ranked": ranked})
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
    log = api.read_log(platform, platform.queue.log_path(plan_id), 0)
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


#: series coloured in the track page's charts (the rest are grey)
TOP_K = 5


def _top(section: BoardSection, k: int = TOP_K) -> list[str]:
    """The ``k`` series the charts colour: the best mean ranks of the Average view, else the best mean final
    metric over the section's speedups."""
    if section.analysis is not None and section.analysis.mean_rank:
        return list(section.analysis.mean_rank)[:k]
    means: dict[str, list[float]] = {}
    for p in section.points:
        means.setdefault(p.name, []).append(p.final.mean)
    return sorted(means, key=lambda n: -sum(means[n]) / len(means[n]))[:k]


def _cd_svgs(section: BoardSection) -> list[str]:
    """The Average view's critical-difference diagrams (Final, Pruned+BN)."""
    out = []
    for a, title in ((section.analysis, "Final"), (section.analysis_pruned_recal, "Pruned+BN")):
        if a is not None and a.friedman is not None:
            out.append(charts.cd_diagram(a.mean_rank, a.critical_difference, a.cliques,
                                         f"{title}: mean rank over {a.blocks} blocks (speedup, seed), "
                                         f"Friedman p = {a.friedman.p:.2g}"))
    return out


def _charts(section: BoardSection, metric: str) -> tuple[str, str]:
    """The section's two charts: final metric vs achieved speedup (95% CI bars), and vs measured latency speedup
    with the Pareto front of the means; the best :data:`TOP_K` methods coloured, the rest grey."""
    top = _top(section)
    series: dict[str, list] = {}
    for p in section.points:
        x = p.achieved or p.speedup
        tip = (f"{p.speedup:g}x target, {x:.2f}x achieved: {p.final.text} (n={p.final.n}"
               + (", 95% CI" if p.final.half_width is not None else "") + f"), rank {p.rank or '-'}")
        series.setdefault(p.name, []).append((x, p.final.mean, p.final.half_width, tip))
    speed = charts.line_chart(series, "achieved MACs speedup (log scale)", f"final {metric}", highlight=top)
    timed = [p for p in section.points if p.latency_speedup is not None]
    points = [(p.name, p.latency_speedup, p.final.mean, p.final.half_width,
               f"{p.speedup:g}x: latency speedup {p.latency_speedup:.2f}x, {metric} {p.final.text}", None)
              for p in timed]
    front = [(p.latency_speedup, p.final.mean) for p in timed if p.pareto]
    runtime = lat.LABELS.get(section.latency_runtime, section.latency_runtime)
    latency = charts.scatter_chart(points, front, f"measured latency speedup, batch 1, {runtime} (x)",
                                   f"final {metric}", highlight=top)
    return speed, latency


@router.get("/tracks/{track}", response_class=HTMLResponse)
def board_page(request: Request, who: Who, track: str, setting: Optional[str] = None,
               view: str = "average", importance: Annotated[Optional[list[str]], Query()] = None,
               regularizer: Annotated[Optional[list[str]], Query()] = None):
    records = [r for r in request.app.state.platform.store.records().values() if r.track.id == track]
    if not records:
        raise HTTPException(404, f"no records of track {track!r} yet")
    try:
        b = board(records, track, setting, view, importance, regularizer)
    except HarnessError as e:
        raise HTTPException(422, str(e)) from None

    def link(**changes) -> str:
        q = {"setting": b.setting, "view": b.view, "importance": b.importance, "regularizer": b.regularizer}
        q.update(changes)
        return f"/tracks/{quote(track)}?" + urlencode(q, doseq=True)

    return _render(request, "board.html", who, b=b, link=link, n_records=len(records), flag=FLAG,
                   blocks=[(s, *_charts(s, b.metric), _cd_svgs(s)) for s in b.sections], top_k=TOP_K)


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

