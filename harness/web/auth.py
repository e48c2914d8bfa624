"""Who is asking, and may they change anything.

- API clients send ``Authorization: Bearer <token>``; browsers log in once (``POST /api/session``) and
  carry an HttpOnly, SameSite=Strict session cookie (``Secure`` behind HTTPS: ``serve --https``). A
  session is a random id the server keeps (its sha256, in ``<store>/.web/sessions.json``): logging out
  (``DELETE /api/session``) revokes it on the server, it expires after ``--session-hours``, and a user
  taken out of the users file loses every session.
- State-changing requests (POST/PUT/PATCH/DELETE) made with the cookie (or, on a local server, with
  no credentials at all) must also carry ``X-PBench-CSRF``: a per-user token the pages embed, which a
  page of another origin can neither read nor send; an ``Origin`` header, when present, must be this
  server's. Bearer requests are exempt (a browser never adds that header by itself).
- On a loopback server the Host header must name this machine (no DNS rebinding).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional
from urllib.parse import urlsplit

from fastapi import HTTPException, Request

from harness.files import atomic_write_text
from harness.errors import HarnessError
from harness.web.config import LOCAL_USER, TOKEN_USER, ServerConfig, User, is_loopback, load_users, token_sha256

COOKIE = "pbench_session"
CSRF_HEADER = "X-PBench-CSRF"
UNSAFE = {"POST", "PUT", "PATCH", "DELETE"}
#: sessions a user keeps at once (browsers, machines); a new login ends the oldest beyond it
MAX_SESSIONS = 10


def _same(sent: str, expected: str) -> bool:
    """Constant-time comparison of a value from a request (any characters) with a server-made one."""
    return hmac.compare_digest(sent.encode("utf-8", "replace"), expected.encode())


class Sessions:
    """Server-side sessions: ``sha256(id) -> (user, expiry)``, kept in a file so that a restart keeps them."""

    def __init__(self, path: Path, hours: float):
        self.path, self.seconds = path, hours * 3600
        self._lock = threading.Lock()
        try:
            raw = json.loads(path.read_text())
            self._by_hash = {k: (v["user"], float(v["expires"])) for k, v in raw.items()}
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            self._by_hash = {}

    _hash = staticmethod(token_sha256)  # a session id is kept as a token is: its sha256

    def _save(self) -> None:
        now = time.time()
        self._by_hash = {k: v for k, v in self._by_hash.items() if v[1] > now}
        atomic_write_text(self.path, json.dumps({k: {"user": u, "expires": e} for k, (u, e) in self._by_hash.items()}))

    def open(self, user: str) -> str:
        """A new session of ``user``; their oldest ones beyond :data:`MAX_SESSIONS` end."""
        session_id = secrets.token_urlsafe(32)
        with self._lock:
            self._by_hash[self._hash(session_id)] = (user, time.time() + self.seconds)
            mine = sorted((e, h) for h, (u, e) in self._by_hash.items() if u == user)
            for _, h in mine[:-MAX_SESSIONS]:
                del self._by_hash[h]
            self._save()
        return session_id

    def user(self, session_id: str) -> Optional[str]:
        found = self._by_hash.get(self._hash(session_id))
        return found[0] if found is not None and found[1] > time.time() else None

    def close(self, session_id: str) -> None:
        with self._lock:
            if self._by_hash.pop(self._hash(session_id), None) is not None:
                self._save()


@dataclass(frozen=True)
class Principal:
    name: str
    admin: bool
    max_queued_runs: Optional[int]
    via: str  # "bearer", "cookie" or "local"


class Auth:
    def __init__(self, cfg: ServerConfig, secret: bytes, token: Optional[str] = None,
                 users: Optional[list[User]] = None):
        self.cfg, self.secret = cfg, secret
        self.sessions = Sessions(cfg.web_dir / "sessions.json", cfg.session_hours)
        self._users: dict[str, User] = {}
        if token is not None:
            self._users[TOKEN_USER] = User(name=TOKEN_USER, token_sha256=token_sha256(token), admin=True)
        for u in users or []:
            self._users[u.name] = u
        self.open = not self._users  # a local server without credentials: everyone here is the owner
        self._file_state: Optional[tuple] = self._stat()
        self._looked = time.monotonic()

    def _stat(self) -> Optional[tuple]:
        try:
            st = self.cfg.users_file.stat()
            return st.st_mtime_ns, st.st_size, st.st_ino
        except (AttributeError, OSError):
            return None

    @property
    def users(self) -> dict[str, User]:
        """The users, re-read (at most once a second) when the users file changed: a user taken out of it
        loses access at once, without a restart. A file that no longer reads keeps the previous users."""
        if self.cfg.users_file is not None and time.monotonic() - self._looked > 1.0:
            self._looked = time.monotonic()
            state = self._stat()
            if state != self._file_state:
                self._file_state = state
                try:
                    self._users = {u.name: u for u in load_users(self.cfg.users_file)}
                except HarnessError:
                    pass
        return self._users

    # -- credentials ---------------------------------------------------------------------------
    def by_token(self, token: str) -> Optional[User]:
        digest = token_sha256(token)
        for user in self.users.values():
            if hmac.compare_digest(user.token_sha256, digest):
                return user
        return None

    def _sign(self, text: str) -> str:
        return hmac.new(self.secret, text.encode(), hashlib.sha256).hexdigest()

    def _from_cookie(self, value: str) -> Optional[User]:
        name = self.sessions.user(value)
        return self.users.get(name) if name is not None else None

    def csrf_token(self, user: str) -> str:
        return self._sign(f"csrf:{user}")[:32]

    # -- per request ---------------------------------------------------------------------------
    def identify(self, request: Request) -> Optional[Principal]:
        header = request.headers.get("authorization", "")
        if header.lower().startswith("bearer "):
            user = self.by_token(header[7:].strip())
            return self._principal(user, "bearer") if user else None
        if self.open:
            return Principal(LOCAL_USER, True, None, "local")
        cookie = request.cookies.get(COOKIE)
        user = self._from_cookie(cookie) if cookie else None
        return self._principal(user, "cookie") if user else None

    @staticmethod
    def _principal(user: User, via: str) -> Principal:
        return Principal(user.name, user.admin, user.max_queued_runs, via)

    def check_host(self, request: Request) -> None:
        if not is_loopback(self.cfg.host):
            return
        host = (request.headers.get("host") or "").rsplit(":", 1)[0].strip("[]")
        if host and not is_loopback(host) and host not in self.cfg.allowed_hosts:
            raise HTTPException(400, f"unexpected Host {host!r}: this server answers on 127.0.0.1 / localhost "
                                     f"(add --allowed-host NAME behind a proxy)")

    def check_csrf(self, request: Request, who: Principal) -> None:
        if who.via == "bearer":
            return
        origin = request.headers.get("origin")
        if origin and origin != "null":
            here = request.headers.get("host", "")
            if urlsplit(origin).netloc != here:
                raise HTTPException(403, f"cross-origin request from {origin} refused")
        sent = request.headers.get(CSRF_HEADER, "")
        if not _same(sent, self.csrf_token(who.name)):
            raise HTTPException(403, f"missing or wrong {CSRF_HEADER} header (reload the page; API clients use "
                                     f"Authorization: Bearer TOKEN)")


def viewer(request: Request) -> Principal:
    """FastAPI dependency: the authenticated user (401 otherwise)."""
    auth: Auth = request.app.state.auth
    auth.check_host(request)
    who = auth.identify(request)
    if who is None:
        raise HTTPException(401, "log in (POST /api/session with your token) or send Authorization: Bearer TOKEN",
                            headers={"WWW-Authenticate": "Bearer"})
    if request.method in UNSAFE:
        auth.check_csrf(request, who)
    return who
