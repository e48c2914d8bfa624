"""The server's settings (``pbench-harness serve`` flags) and its users.

The platform works on the same result store, checkpoint cache, data root and executors as the CLI.
Its own state lives in the store's hidden folder ``<store>/.web/``: plans, uploads, the session
secret, the lock that keeps a second server off the same store.

Access: bound to a loopback address with no users file, the one user is the machine's owner
(``local``); uploaded methods may then run under any runner. Bound to any other address, a token
(``--token``, one user named ``owner``) or a users file is required, every request must carry it,
and uploaded methods run only under the docker runner.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import secrets
from pathlib import Path
from typing import Literal, Optional

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from harness.errors import HarnessError
from specs.base import Identifier, Sha256, Strict, explain

WEB_DIR = ".web"
LOCAL_USER = "local"
TOKEN_USER = "owner"


class User(Strict):
    """One entry of the users file. The file holds the sha256 of each token, never the token."""

    name: Identifier
    token_sha256: Sha256
    max_queued_runs: Optional[int] = Field(None, ge=0, description="runs waiting or running at once "
                                                                   "(default: the server's --max-queued-runs)")
    admin: bool = Field(False, description="may cancel anyone's plans and runs")


class UsersFile(Strict):
    users: list[User] = Field(min_length=1)

    @field_validator("users")
    @classmethod
    def _unique(cls, users: list[User]) -> list[User]:
        names = [u.name for u in users]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"user {dup[0]!r} is listed twice")
        return users


def token_sha256(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "replace")).hexdigest()


def load_users(path: Path) -> list[User]:
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except OSError as e:
        raise HarnessError(f"{path}: cannot read users file ({e.strerror})") from None
    except yaml.YAMLError:
        raise HarnessError(f"{path}: not valid YAML/JSON") from None
    try:
        return UsersFile.model_validate(raw or {}).users
    except ValidationError as e:
        raise HarnessError(f"{path}: invalid users file: {explain(e)} (expected users: [{{name, token_sha256}}])") \
            from None


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class ServerConfig(Strict):
    """Everything the server and its plan workers need; written (without secrets) to
    ``<store>/.web/server.json`` for the workers."""

    store: Path
    cache_dir: Optional[Path] = None
    data_root: Optional[Path] = None
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    jobs: int = Field(1, ge=1, description="local executor: runs of a plan in parallel (worker processes)")
    executor: Literal["local", "slurm"] = "local"
    slurm_config: Optional[Path] = None
    users_file: Optional[Path] = None
    allowed_hosts: list[str] = Field(default_factory=list, description="extra Host header names (a proxy's)")
    max_queued_runs: int = Field(200, ge=1, description="per user: runs waiting or running at once")
    max_plan_runs: int = Field(500, ge=1, description="runs in one plan")
    max_plans_queued: int = Field(20, ge=1, description="per user: plans waiting or running at once")
    max_model_mb: float = Field(512, gt=0, description="largest model upload")
    max_method_mb: float = Field(5, gt=0, description="largest method zip (compressed)")
    max_method_unpacked_mb: float = Field(20, gt=0, description="largest method folder once unpacked")
    upload_idle_s: float = Field(20, gt=0, description="an upload that pauses longer is refused (408)")
    max_uploads_per_user: int = Field(20, ge=1, description="methods, and models, a user keeps on the server")
    poll_s: float = Field(0.1, gt=0, description="how often event streams look for new events")
    session_hours: float = Field(12, gt=0, le=24 * 30, description="a login session's lifetime")
    https: bool = Field(False, description="the server sits behind HTTPS (a TLS proxy): session cookies get Secure")

    @model_validator(mode="after")
    def _paths(self) -> "ServerConfig":
        if self.slurm_config is not None and self.executor != "slurm":
            raise ValueError("--slurm-config needs --executor slurm")
        return self

    @property
    def web_dir(self) -> Path:
        return self.store / WEB_DIR

    @property
    def local_owner(self) -> bool:
        """The server runs locally for its owner: loopback only, one user."""
        return is_loopback(self.host) and self.users_file is None

    def save(self) -> Path:
        path = self.web_dir / "server.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.model_dump_json(indent=1) + "\n")
        return path

    @classmethod
    def read(cls, store: Path) -> "ServerConfig":
        return cls.model_validate(json.loads((Path(store) / WEB_DIR / "server.json").read_text()))


def server_secret(cfg: ServerConfig) -> bytes:
    """The key that signs session cookies and CSRF tokens (kept across restarts, mode 600)."""
    path = cfg.web_dir / "secret"
    try:
        return bytes.fromhex(path.read_text().strip())
    except (OSError, ValueError):
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    key = secrets.token_bytes(32)
    with os.fdopen(fd, "w") as f:
        f.write(key.hex())
    return key


def check_access(cfg: ServerConfig, token: Optional[str]) -> None:
    """Refuse to expose the platform beyond loopback without credentials (bad input, one line)."""
    if not is_loopback(cfg.host) and not token and cfg.users_file is None:
        raise HarnessError(f"--host {cfg.host} exposes the platform beyond this machine: give --token TOKEN (or "
                           f"PBENCH_TOKEN) or --users FILE")
    if token is not None and len(token) < 16:
        raise HarnessError("--token: use at least 16 characters (e.g. `python -c 'import secrets; "
                           "print(secrets.token_urlsafe())'`)")
    if token is not None and cfg.users_file is not None:
        raise HarnessError("give --token or --users, not both")
