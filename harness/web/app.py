"""The FastAPI application: JSON API (``/api/...``, OpenAPI at ``/openapi.json``, described at
``/api-docs``) and the pages built on it, over one :class:`Platform`."""

from __future__ import annotations

import fcntl
import os
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Optional

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

import harness
from harness.errors import HarnessError
from harness.web.auth import Auth
from harness.web.config import ServerConfig, load_users, server_secret
from harness.web.planning import PlanError
from harness.web.queue import PlanQueue, QueueLimit
from harness.web.runs import StoreView
from harness.web.uploads import UploadError, Uploads



class Platform:
    """The server's state: settings, the store seen through a cache, the plan queue, uploads, access."""

    def __init__(self, cfg: ServerConfig, token: Optional[str] = None):
        cfg = cfg.model_copy(update={"store": Path(cfg.store).resolve()})
        self.cfg = cfg
        cfg.web_dir.mkdir(parents=True, exist_ok=True)
        self._lock_file = open(cfg.web_dir / "server.lock", "a+")
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._lock_file.seek(0)
            other = self._lock_file.read().strip() or "?"
            self._lock_file.close()
            raise HarnessError(f"another pbench-harness serve (pid {other}) uses the store {cfg.store}: stop it "
                               f"first") from None
        self._lock_file.seek(0)
        self._lock_file.truncate()
        self._lock_file.write(str(os.getpid()))
        self._lock_file.flush()
        cfg.save()
        users = load_users(cfg.users_file) if cfg.users_file else None
        self.auth = Auth(cfg, server_secret(cfg), token=token, users=users)
        self.store = StoreView(cfg.store)
        self.queue = PlanQueue(cfg, self.store)
        self.uploads = Uploads(cfg)
        self.uploads.clean()

    def close(self) -> None:
        self.queue.stop()
        self._lock_file.close()

    def redact(self, text: str) -> str:
        """``text`` without the server's absolute paths (store, cache, data root, home) on a shared server: a
        user learns the names of runs and uploads, never where they live on the machine."""
        if self.cfg.local_owner:
            return text
        for path, name in self._paths:
            text = text.replace(path, name)
        return text

    @property
    def _paths(self) -> list[tuple[str, str]]:
        from harness.protocol.checkpoints import default_cache_dir
        places = [(self.cfg.store, "<store>"), (self.cfg.cache_dir or default_cache_dir(), "<cache>"),
                  (self.cfg.data_root, "<data>"), (Path.home(), "~")]
        out = []
        for path, name in places:
            if path is not None:
                out += [(str(p), name) for p in {Path(path).expanduser().resolve(), Path(path).expanduser().absolute()}]
        return sorted(out, key=lambda pn: -len(pn[0]))  # the longest first: the store may lie under home


class RedactPaths:
    """Takes the server's absolute paths out of every JSON answer and page (:meth:`Platform.redact`)."""

    def __init__(self, app, platform: Platform):
        self.app, self.platform = app, platform

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or self.platform.cfg.local_owner:
            return await self.app(scope, receive, send)
        start, body = {}, []

        async def capture(message):
            if message["type"] == "http.response.start":
                headers = dict(message.get("headers", []))
                if not headers.get(b"content-type", b"").startswith((b"application/json", b"text/html")):
                    start["pass"] = True
                    return await send(message)
                start["message"] = message
            elif start.get("pass"):
                return await send(message)
            else:
                body.append(message.get("body", b""))
                if not message.get("more_body"):
                    data = self.platform.redact(b"".join(body).decode("utf-8", "replace")).encode()
                    msg = start["message"]
                    headers = [(k, v) for k, v in msg.get("headers", []) if k != b"content-length"]
                    await send({**msg, "headers": [*headers, (b"content-length", str(len(data)).encode())]})
                    await send({"type": "http.response.body", "body": data})

        await self.app(scope, receive, capture)


class BodyLimits:
    """Caps request bodies before anything parses them (413 at once when Content-Length says so, else as
    soon as the streamed body passes the limit): uploads get their own limits, everything else 1 MB."""

    def __init__(self, app, limits: dict[str, int], default: int = 1 << 20):
        from starlette.middleware.body_limit import RequestBodyLimitMiddleware
        self.app = app
        self.by_path = {path: RequestBodyLimitMiddleware(app, n) for path, n in limits.items()}
        self.default = RequestBodyLimitMiddleware(app, default)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        return await self.by_path.get(scope["path"], self.default)(scope, receive, send)


def _error(status: int, message: str, field: Optional[str] = None, headers=None) -> JSONResponse:
    body = {"error": message}
    if field is not None:
        body["field"] = field
    return JSONResponse(body, status_code=status, headers=headers)


def create_app(cfg: ServerConfig, token: Optional[str] = None, start_queue: bool = True) -> FastAPI:
    """The platform on ``cfg.store``; ``start_queue=False`` leaves plans queued (tests of the API alone)."""
    platform = Platform(cfg, token)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if start_queue:
            platform.queue.start()
        try:
            yield
        finally:
            platform.close()

    app = FastAPI(
        title="PruningBench platform", version=harness.__version__, lifespan=lifespan,
        docs_url=None, redoc_url=None,  # their pages load scripts from a CDN; /api-docs is served from here
        description="The JSON API of `pbench-harness serve`: build and queue plans, follow runs live, read "
                    "leaderboards, upload models and methods. Authenticate with `Authorization: Bearer TOKEN` "
                    "(or the session cookie of `POST /api/session`); browser sessions send `X-PBench-CSRF` on "
                    "every state-changing request. Errors are `{\"error\": one line, \"field\"?: plan field}`.")
    app.state.platform = platform
    app.state.auth = platform.auth

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        if not request.url.path.startswith("/api") and "text/html" in request.headers.get("accept", ""):
            from http import HTTPStatus

            from harness.web.pages import templates
            who = platform.auth.identify(request)
            return templates.TemplateResponse(request, "error.html", {
                "who": who, "csrf": platform.auth.csrf_token(who.name) if who else "", "status": exc.status_code,
                "title": HTTPStatus(exc.status_code).phrase, "message": str(exc.detail),
                "local_owner": platform.cfg.local_owner, "auth_open": platform.auth.open},
                status_code=exc.status_code)
        return _error(exc.status_code, str(exc.detail), headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        loc = [str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path")]
        more = f" (+{len(exc.errors()) - 1} more)" if len(exc.errors()) > 1 else ""
        return _error(422, f"{'.'.join(loc) or 'request'}: {first.get('msg')}{more}", loc[0] if loc else None)

    @app.exception_handler(PlanError)
    async def plan_error(request: Request, exc: PlanError):
        return _error(422, str(exc), exc.field)

    @app.exception_handler(UploadError)
    async def upload_error(request: Request, exc: UploadError):
        return _error(exc.status, str(exc))

    @app.exception_handler(QueueLimit)
    async def queue_limit(request: Request, exc: QueueLimit):
        return _error(429, str(exc))

    @app.exception_handler(HarnessError)
    async def harness_error(request: Request, exc: HarnessError):
        return _error(422, str(exc))

    from harness.web import api, pages
    app.add_exception_handler(pages.LoginNeeded, pages.login_redirect)
    app.include_router(api.router)
    app.include_router(pages.router)
    app.mount("/static", StaticFiles(directory=pages.HERE / "static"), name="static")
    app.add_middleware(RedactPaths, platform=platform)
    margin = 1 << 16  # multipart framing around the file
    app.add_middleware(BodyLimits, limits={
        "/api/uploads/models": int(cfg.max_model_mb * 2**20) + margin,
        "/api/uploads/methods": int(cfg.max_method_mb * 2**20) + margin})
    return app
