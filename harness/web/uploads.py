"""Uploads: model weights and method folders, kept in the store, never run on the server outside a
sandbox.

Every upload streams from the request body to its place in the store (one copy on disk, counted
against its cap while it arrives, refused when it stalls) and is checked in a worker process; a user
sends one upload at a time (eight on the server), and at most :data:`MAX_SCANS` model checks run at
once (one per user): 429 beyond that. A rejected upload leaves nothing behind.

Models are **data, never code**: a ``safetensors`` file of weights (a JSON header and raw tensors: no
pickle) beside an architecture the harness builds itself from a library (a registered name,
``torchvision:<name>``, ``timm:<name>``, ``hf:<type>``) for a registered dataset. The worker builds
that architecture for the dataset's default track and loads the weights into it strictly (every
tensor's name and shape must match), as a run would; the upload then has its own derived track whose
base checkpoint is the uploaded file (``<store>/.web/uploads/models/<sha256>.safetensors``), and plans
use it as ``model: upload:<id>``. A pickled whole model (``torch.save(model)``) is refused: unpickling
calls whatever the file names, and even torch's restricted loader with a module allow-list calls
constructors with arguments from the file (issue 18's remote code execution).

Methods (``<store>/.web/uploads/methods/<id>-<version>-<sha8>/``): a zip of a method folder
(``manifest.json`` + ``method.py``, at the top or in one folder), unpacked by :func:`safe_extract`
(no absolute paths, ``..``, links or special files; bounded count, sizes and compression ratio,
counted while inflating), then validated as ``check-method`` does: the manifest, then the conformance
suite in a worker process — under the subprocess runner only on a server its owner runs locally,
otherwise in the method's docker image (built from the method template's Dockerfile, no network).
An uploaded method is usable in plans once its checks passed.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import secrets
import shutil
import stat
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
import zlib
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import Literal, Optional

from harness.errors import HarnessError
from harness.files import atomic_write_text, sha256_file
from harness.web.config import ServerConfig
from specs.base import Strict
from specs.base import one_line

MAX_ENTRIES = 200
MAX_RATIO = 100  # uncompressed / compressed, per entry (a zip bomb compresses ~1000:1)
MAX_DEPTH = 8
_NAME = re.compile(r"^[A-Za-z0-9_.\- ]+$")
#: uploads being received at once (on the server, per user), and model checks running at once
MAX_RECEIVING, MAX_RECEIVING_PER_USER = 8, 1
MAX_SCANS, MAX_SCANS_PER_USER = 2, 1
#: a body must keep arriving: this average rate after the first minute (and no long pause: upload_idle_s)
MIN_RATE, GRACE_S = 64 * 1024, 60.0
#: fields besides the file in an upload form, and their size
MAX_FIELDS, MAX_FIELD_BYTES = 8, 4096
SAFETENSORS = ".safetensors"
MethodStatus = Literal["checking", "passed", "failed", "needs-docker"]
#: a method upload whose checks ended so keeps its record (why), not its files
REJECTED = ("failed", "needs-docker")
#: method uploads waiting for their conformance checks (run one at a time): on the server, and per user
MAX_QUEUED_CHECKS, MAX_QUEUED_CHECKS_PER_USER = 8, 2


class UploadError(HarnessError):
    """A rejected upload (the API answers 4xx with the one-line reason; nothing is kept)."""

    def __init__(self, message: str, status: int = 422):
        super().__init__(message)
        self.status = status


class UploadedMethod(Strict):
    name: str  # <id>-<version>-<sha8>: plans refer to it as upload:<name>
    id: str
    version: str
    provides: list[str]
    sha256: str
    size: int
    owner: str
    created_at: str
    status: MethodStatus = "checking"
    detail: str = ""
    runner: str = "subprocess"
    image: Optional[str] = None
    checks: list[dict] = []


class UploadedModel(Strict):
    id: str  # plans use it as model: upload:<id>
    sha256: str  # of the weights file
    filename: str
    size: int
    owner: str
    created_at: str
    architecture: str
    dataset: str
    track: str  # the derived track's id
    params: int
    tensors: int
    reference: str  # "upload:<id>"


# -- zips ------------------------------------------------------------------------------------------
def _check_name(name: str) -> PurePosixPath:
    if "\\" in name or "\x00" in name or name.startswith("/") or re.match(r"^[A-Za-z]:", name):
        raise UploadError(f"zip entry {name!r}: absolute or Windows path")
    path = PurePosixPath(name)
    parts = [p for p in path.parts if p not in ("", ".")]
    if any(p == ".." for p in parts):
        raise UploadError(f"zip entry {name!r}: '..' would leave the method folder")
    if len(parts) > MAX_DEPTH or len(name) > 255:
        raise UploadError(f"zip entry {name!r}: nested too deep or name too long")
    if not all(_NAME.match(p) for p in parts):
        raise UploadError(f"zip entry {name!r}: use letters, digits, '.', '_', '-' in file names")
    return PurePosixPath(*parts)


def safe_extract(archive: Path, dest: Path, max_bytes: int) -> list[str]:
    """Unpack ``archive`` into the empty folder ``dest`` (the method folder: a lone top folder is
    stripped); returns the files. Raises :class:`UploadError` before writing anything unsafe; a corrupt
    archive (bad CRC, broken deflate data, sizes that lie) is an :class:`UploadError` too."""
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError):
        raise UploadError("not a zip archive") from None
    try:
        with zf:
            return _extract(zf, dest, max_bytes)
    except UploadError:
        raise
    except (zipfile.BadZipFile, zlib.error, EOFError, ValueError, NotImplementedError, RuntimeError, OSError) as e:
        raise UploadError(f"corrupt zip archive: {one_line(e)[:120]}") from None


def _extract(zf: zipfile.ZipFile, dest: Path, max_bytes: int) -> list[str]:
    infos = [i for i in zf.infolist() if not i.filename.startswith("__MACOSX/")]
    if len(infos) > MAX_ENTRIES:
        raise UploadError(f"{len(infos)} entries in the zip (at most {MAX_ENTRIES})")
    entries, seen, declared = [], set(), 0
    for info in infos:
        mode = info.external_attr >> 16
        kind = stat.S_IFMT(mode)
        if kind and kind not in (stat.S_IFREG, stat.S_IFDIR):
            what = "a symbolic link" if kind == stat.S_IFLNK else "not a regular file"
            raise UploadError(f"zip entry {info.filename!r} is {what}")
        if info.flag_bits & 0x1:
            raise UploadError(f"zip entry {info.filename!r} is encrypted")
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise UploadError(f"zip entry {info.filename!r}: use stored or deflated compression")
        path = _check_name(info.filename)
        if info.is_dir() or not path.parts:
            continue
        low = str(path).lower()
        if low in seen:
            raise UploadError(f"zip entry {info.filename!r} appears twice")
        seen.add(low)
        declared += info.file_size
        if info.file_size > MAX_RATIO * max(info.compress_size, 1) and info.file_size > 1 << 20:
            raise UploadError(f"zip entry {info.filename!r} inflates {info.file_size // max(info.compress_size, 1)}"
                              f"x: refused as a zip bomb")
        entries.append((info, path))
    if declared > max_bytes:
        raise UploadError(f"the method unpacks to {declared / 2**20:.1f} MB (at most {max_bytes / 2**20:.0f} MB)",
                          413)
    tops = {p.parts[0] for _, p in entries}
    strip = len(tops) == 1 and all(len(p.parts) > 1 for _, p in entries)
    if not any((p.parts[1:] if strip else p.parts) == ("manifest.json",) for _, p in entries):
        raise UploadError("no manifest.json at the top of the zip (zip the method folder: manifest.json, "
                          "method.py, ...)")
    written, total = [], 0
    for info, path in entries:
        rel = PurePosixPath(*path.parts[1:]) if strip else path
        target = dest.joinpath(*rel.parts)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
        except OSError:
            raise UploadError(f"zip entry {info.filename!r} clashes with another entry") from None
        with os.fdopen(fd, "wb") as out, zf.open(info) as src:
            size = 0
            while chunk := src.read(1 << 16):
                size += len(chunk)
                total += len(chunk)
                if size > info.file_size or total > max_bytes:  # headers lie: count what inflates
                    raise UploadError(f"zip entry {info.filename!r} inflates beyond its declared size", 413)
                out.write(chunk)
        written.append(str(rel))
    return written


# -- streamed upload forms -------------------------------------------------------------------------
async def receive_form(chunks, content_type: str, dest: Path, limit: int, idle_s: float = 20.0
                       ) -> tuple[dict[str, str], str, str, int]:
    """Parse a ``multipart/form-data`` body as it arrives: its one ``file`` part goes straight into the
    new file ``dest`` (refused past ``limit`` bytes, or when the body stalls: a pause over ``idle_s``, or
    less than :data:`MIN_RATE` on average after :data:`GRACE_S`), the other fields (at most :data:`MAX_FIELDS` of
    :data:`MAX_FIELD_BYTES`) are returned. Returns (fields, file name, sha256, size); on any error
    ``dest`` is removed and an :class:`UploadError` says why."""
    from python_multipart import MultipartParser
    from python_multipart.exceptions import MultipartParseError
    from python_multipart.multipart import parse_options_header

    kind, options = parse_options_header(content_type or "")
    boundary = options.get(b"boundary")
    if kind != b"multipart/form-data" or not boundary:
        raise UploadError("send the upload as multipart/form-data with a 'file' field", 415)
    fields: dict[str, bytearray] = {}
    state = {"name": None, "filename": None, "header": b"", "headers": {}, "size": 0, "error": None}
    h = hashlib.sha256()
    out = open(dest, "xb")

    def on_header_field(data, start, end):
        state["header"] += data[start:end]

    def on_header_value(data, start, end):
        state["headers"][state["header"].lower()] = state["headers"].get(state["header"].lower(), b"") + \
            data[start:end]

    def on_header_end():
        state["header"] = b""

    def on_headers_finished():
        _, opts = parse_options_header(state["headers"].get(b"content-disposition", b""))
        state["name"] = opts.get(b"name", b"").decode("latin-1")
        if state["name"] == "file":
            if state["filename"] is not None:
                state["error"] = UploadError("more than one 'file' field")
            state["filename"] = opts.get(b"filename", b"upload").decode("utf-8", "replace")
        elif len(fields) >= MAX_FIELDS:
            state["error"] = UploadError(f"more than {MAX_FIELDS} form fields")
        else:
            fields[state["name"]] = bytearray()
        state["headers"] = {}

    def on_part_data(data, start, end):
        if state["error"] is not None:
            return
        chunk = data[start:end]
        if state["name"] == "file":
            state["size"] += len(chunk)
            if state["size"] > limit:
                state["error"] = UploadError(f"the upload exceeds {limit / 2**20:g} MB", 413)
                return
            h.update(chunk)
            out.write(chunk)
        else:
            field = fields[state["name"]]
            field += chunk
            if len(field) > MAX_FIELD_BYTES:
                state["error"] = UploadError(f"form field {state['name'][:40]!r} is longer than {MAX_FIELD_BYTES} "
                                             f"bytes")

    parser = MultipartParser(boundary, {"on_header_field": on_header_field, "on_header_value": on_header_value,
                                        "on_header_end": on_header_end, "on_headers_finished": on_headers_finished,
                                        "on_part_data": on_part_data})
    try:
        start, received, stream = time.monotonic(), 0, chunks.__aiter__()
        while True:
            try:
                chunk = await asyncio.wait_for(stream.__anext__(), idle_s)
            except StopAsyncIteration:
                break
            except asyncio.TimeoutError:
                raise UploadError(f"the upload paused for more than {idle_s:g} s", 408) from None
            received += len(chunk)
            elapsed = time.monotonic() - start
            if elapsed > GRACE_S and received / elapsed < MIN_RATE:
                raise UploadError(f"the upload arrives slower than {MIN_RATE // 1024} KB/s", 408)
            parser.write(chunk)
            if state["error"] is not None:
                raise state["error"]
        parser.finalize()
        if state["filename"] is None:
            raise UploadError("no 'file' field in the form")
        out.close()
        try:
            text = {k: bytes(v).decode() for k, v in fields.items()}
        except UnicodeDecodeError:
            raise UploadError("form fields must be UTF-8 text") from None
        return text, state["filename"], h.hexdigest(), state["size"]
    except BaseException as e:
        out.close()
        dest.unlink(missing_ok=True)
        if isinstance(e, MultipartParseError):
            raise UploadError(f"malformed multipart body: {one_line(e)[:120]}", 400) from None
        raise


# -- model check (runs in a worker process) --------------------------------------------------------
def safetensors_header(path: Path) -> dict:
    """The JSON header of a safetensors file (8 bytes of length, then JSON), read as data: a cheap first
    check in the server, before a worker process loads the tensors."""
    try:
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            if not 2 <= n <= min(100 << 20, path.stat().st_size - 8):
                raise ValueError("header length")
            header = json.loads(f.read(n))
        if not isinstance(header, dict):
            raise ValueError("header")
        return header
    except (OSError, ValueError, UnicodeDecodeError, RecursionError):
        raise UploadError("not a safetensors file; save weights with safetensors.torch.save_file("
                          "model.state_dict(), 'model.safetensors')") from None


def upload_track(architecture: str, dataset: str, weights: Path, digest: str, upload_id: str):
    """The derived track of uploaded weights: ``dataset``'s default track with the model replaced by
    ``architecture`` and the weights file as its published base checkpoint."""
    from harness.tracks import default_track
    from specs.track import Checkpoint, ModelRef, TrackConfig

    base = default_track(dataset)
    if base.metric != "top1":
        raise UploadError(f"uploaded models are classifiers; {dataset} is a {base.metric} dataset")
    track = base.model_copy(update={
        "id": f"{dataset}-upload-{upload_id}", "model": ModelRef(name=architecture),
        "checkpoint": Checkpoint(path=str(weights), sha256=digest),
        "description": f"{base.id} with the model replaced by uploaded {architecture} weights {upload_id}"})
    return TrackConfig.model_validate(track.model_dump(by_alias=True))


def check_model(weights: Path, architecture: str, dataset: str, store: Path) -> dict:
    """Whether ``weights`` (safetensors) load strictly into ``architecture`` built for ``dataset``, as a run
    would load its base: {track, params, tensors} or {error}. Used by ``python -m harness.web.worker
    check-model``; nothing from the file is executed (safetensors is data)."""
    import torch
    from safetensors import SafetensorError, safe_open

    from harness.models.refs import check_reference
    from harness.protocol.checkpoints import load_state
    from harness.tasks import task_for
    from harness.web.config import ServerConfig

    try:
        with safe_open(str(weights), framework="pt") as f:
            tensors = len(list(f.keys()))
    except (SafetensorError, OSError, ValueError) as e:
        return {"error": f"not a safetensors file ({one_line(e)[:120]}); save weights with "
                         f"safetensors.torch.save_file(model.state_dict(), 'model.safetensors')"}
    try:
        check_reference(architecture)
        track = upload_track(architecture, dataset, weights, sha256_file(weights), "check")
        cfg = ServerConfig.read(store)
        task = task_for(track, data_root=cfg.data_root)
        try:  # names and shapes first, on the meta device: a 70-byte file cannot make the worker allocate a big model
            with torch.device("meta"):
                want = {k: tuple(v.shape) for k, v in task.architecture().state_dict().items()}
        except Exception:
            want = {k: tuple(v.shape) for k, v in task.architecture().state_dict().items()}
        with safe_open(str(weights), framework="pt") as f:
            got = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
        missing, extra = sorted(set(want) - set(got)), sorted(set(got) - set(want))
        wrong = [k for k in want if k in got and got[k] != want[k]]
        what = f"{architecture} on {dataset}"
        if missing:
            return {"error": f"the weights lack {len(missing)} tensors of {what}, e.g. {missing[0]!r}"}
        if extra:
            return {"error": f"the weights have {len(extra)} tensors that {what} does not, e.g. {extra[0]!r}"}
        if wrong:
            return {"error": f"tensor {wrong[0]!r} has shape {list(got[wrong[0]])}; {what} needs "
                             f"{list(want[wrong[0]])}"}
        model = task.architecture()
        load_state(model, weights)
    except HarnessError as e:
        return {"error": str(e).replace(str(weights), "the uploaded file")}
    return {"params": sum(p.numel() for p in model.parameters()), "tensors": tensors}


def _remove_image(image: str) -> None:
    from harness.runners.docker_runner import docker_client
    try:
        docker_client().images.remove(image, force=True)
    except Exception:  # gone already, or in use: the organizer's `docker image prune` takes it
        pass


def _quota(owner: str, kept: list, limit: int) -> None:
    mine = sum(1 for u in kept if u.owner == owner)
    if mine >= limit:
        raise UploadError(f"you keep {mine} uploads of this kind on this server (at most {limit})", 429)


def _read_all(model, paths) -> list:
    """Every valid ``model`` document among ``paths`` (one being written is skipped)."""
    out = []
    for path in sorted(paths):
        try:
            out.append(model.model_validate_json(path.read_text()))
        except (OSError, ValueError):
            continue
    return out


def _worker(*args: str, timeout: float) -> subprocess.CompletedProcess:
    """A worker process (its own process group, which ends when this server process does)."""
    return subprocess.run([sys.executable, "-m", "harness.web.worker", *args, "--parent", str(os.getpid())],
                          capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
                          start_new_session=True, env={**os.environ, "PBENCH_NO_PROGRESS": "1"})


class Uploads:
    def __init__(self, cfg: ServerConfig):
        self.cfg = cfg
        self.root = cfg.web_dir / "uploads"
        self.methods_dir = self.root / "methods"
        self.models_dir = self.root / "models"
        for d in (self.methods_dir, self.models_dir, self.root / "tmp"):
            d.mkdir(parents=True, exist_ok=True)

        self._lock = threading.Lock()
        self._receiving: dict[str, int] = {}
        self._checking: dict[str, int] = {}
        self._checks: list[str] = []
        self._checker: Optional[threading.Thread] = None

    def clean(self) -> None:
        """At the server's start (it holds the store's lock; never a worker, which would cut a live upload):
        remove what a server that died while receiving or unpacking left, and check again the methods whose
        checks it did not finish."""
        for stale in [*self.models_dir.glob(".incoming-*"), *self.methods_dir.glob(".incoming-*"),
                      *(self.root / "tmp").iterdir()]:
            shutil.rmtree(stale, ignore_errors=True) if stale.is_dir() else stale.unlink(missing_ok=True)
        for up in self.methods():
            if up.status == "checking":
                self._queue_check(up.name)

    def _queue_check(self, name: str) -> None:
        self._checks.append(name)
        if self._checker is None or not self._checker.is_alive():
            self._checker = threading.Thread(target=self._check_loop, daemon=True, name="upload-checks")
            self._checker.start()

    # -- methods -------------------------------------------------------------------------------
    def methods(self) -> list[UploadedMethod]:
        return _read_all(UploadedMethod, self.methods_dir.glob("*/upload.json"))

    def method(self, name: str) -> Optional[UploadedMethod]:
        if not re.fullmatch(r"[A-Za-z0-9_\-.+]{1,160}", name) or ".." in name:
            return None
        try:
            return UploadedMethod.model_validate_json((self.methods_dir / name / "upload.json").read_text())
        except (OSError, ValueError):
            return None

    def method_dir(self, up: UploadedMethod) -> Path:
        return self.methods_dir / up.name / "method"

    def _save_method(self, up: UploadedMethod) -> None:
        atomic_write_text(self.methods_dir / up.name / "upload.json", up.model_dump_json(indent=1) + "\n")

    def add_method(self, archive: Path, owner: str, created_at: str) -> tuple[UploadedMethod, bool]:
        """Validate and keep the zip ``archive``; returns (the upload, whether it is new). The
        conformance checks start in the background."""
        from harness.methods import discover, load_source
        digest = sha256_file(archive)
        staging = Path(tempfile.mkdtemp(dir=self.root / "tmp", prefix="method-"))
        try:
            files = safe_extract(archive, staging / "method", int(self.cfg.max_method_unpacked_mb * 2**20))
            if "method.py" not in files:
                raise UploadError("no method.py beside manifest.json (copy method_template/)")
            try:
                source = load_source(staging / "method")
            except HarnessError as e:
                raise UploadError(str(e).replace(str(staging / "method"), "manifest.json")) from None
            m = source.manifest
            try:
                builtin = discover().names()
            except HarnessError:
                builtin = []
            if m.id in builtin:
                raise UploadError(f"method id {m.id!r} is a reference method of this harness: give yours another "
                                  f"id in manifest.json", 409)
            with self._lock:
                everyone = self.methods()
                for other in everyone:
                    if other.id == m.id and other.version == m.version and other.status in REJECTED:
                        shutil.rmtree(self.methods_dir / other.name, ignore_errors=True)  # replaced by this one
                    if other.id == m.id and other.version == m.version and other.status not in REJECTED:
                        if other.sha256 == digest:
                            return other, False
                        raise UploadError(f"{m.id} {m.version} was uploaded before with other content: bump the "
                                          f"version in manifest.json", 409)
                _quota(owner, [o for o in everyone if o.status not in REJECTED], self.cfg.max_uploads_per_user)
                checking = [o.owner for o in everyone if o.status == "checking"]
                if len(checking) >= MAX_QUEUED_CHECKS or checking.count(owner) >= MAX_QUEUED_CHECKS_PER_USER:
                    who = "you have" if checking.count(owner) >= MAX_QUEUED_CHECKS_PER_USER else "the server has"
                    raise UploadError(f"{who} methods waiting for their checks already: try again when they are "
                                      f"done", 429)
                name = f"{m.id}-{m.version}-{digest[:8]}"
                up = UploadedMethod(name=name, id=m.id, version=m.version, provides=list(m.provides), sha256=digest,
                                    size=archive.stat().st_size, owner=owner, created_at=created_at,
                                    runner="subprocess" if self.cfg.local_owner else "docker",
                                    detail="conformance checks queued")
                target = self.methods_dir / name
                shutil.rmtree(target, ignore_errors=True)  # a rejected upload of the same id and version
                atomic_write_text(staging / "upload.json", up.model_dump_json(indent=1) + "\n")
                os.replace(staging, target)
                self._queue_check(name)
                return up, True
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def _check_loop(self) -> None:
        while True:
            with self._lock:
                if not self._checks:
                    return
                name = self._checks.pop(0)
            try:
                proc = _worker("check-method", str(self.cfg.store), name, timeout=1800)
                if (up := self.method(name)) and up.status == "checking":  # the worker died before it said
                    tail = (proc.stderr or proc.stdout).strip().splitlines()
                    self._save_method(up.model_copy(update={
                        "status": "failed", "detail": tail[-1][:300] if tail else f"exit code {proc.returncode}"}))
            except subprocess.TimeoutExpired:
                if (up := self.method(name)) is not None:
                    self._save_method(up.model_copy(update={"status": "failed", "detail": "checks timed out"}))
            up = self.method(name)
            if up is not None and up.status in REJECTED:  # keep why, not the files
                shutil.rmtree(self.methods_dir / name / "method", ignore_errors=True)

    def wait_checks(self, timeout: float = 300) -> None:
        if self._checker is not None:
            self._checker.join(timeout)

    def run_checks(self, name: str) -> UploadedMethod:
        """The conformance suite on upload ``name`` (in the worker process); saves and returns the result."""
        from harness.conformance import check_method
        from harness.methods import load_source
        up = self.method(name)
        source = load_source(self.method_dir(up))
        image = None
        if up.runner == "docker":
            try:
                image = self._build_image(source)
            except HarnessError as e:
                up = up.model_copy(update={"status": "needs-docker", "detail": str(e)})
                self._save_method(up)
                return up
        report = check_method(source, runner=up.runner, image=image)
        failed = [c for c in report.checks if not c.passed]
        if failed and image is not None:  # a rejected method keeps nothing, its image neither
            _remove_image(image)
            image = None
        up = up.model_copy(update={
            "status": "passed" if report.passed else "failed", "image": image,
            "detail": (f"{failed[0].name}: {failed[0].detail}" if failed else
                       f"conformance passed under the {up.runner} runner"),
            "checks": [c.model_dump(mode="json") for c in report.checks]})
        self._save_method(up)
        return up

    @staticmethod
    def _build_image(source) -> str:
        """The method's image, from the template's Dockerfile (an uploaded Dockerfile is ignored)."""
        from harness.methods import TEMPLATE_DIR
        from harness.orchestration.submission import build_image
        from harness.runners.docker_runner import docker_client
        docker_client()  # a one-line HarnessError when no engine is reachable
        shutil.copy(TEMPLATE_DIR / "Dockerfile", source.path / "Dockerfile")
        return build_image(source)

    # -- slots ---------------------------------------------------------------------------------
    @contextmanager
    def _slot(self, held: dict[str, int], owner: str, total: int, per_user: int, what: str):
        with self._lock:
            mine = held.get(owner, 0)
            if sum(held.values()) >= total or mine >= per_user:
                who = "you have" if mine >= per_user else "the server has"
                raise UploadError(f"{who} uploads {what} already: try again when they are done", 429)
            held[owner] = mine + 1
        try:
            yield
        finally:
            with self._lock:
                held[owner] -= 1

    def receive_slot(self, owner: str):
        """A place among the uploads being received (:data:`MAX_RECEIVING`, per user
        :data:`MAX_RECEIVING_PER_USER`), taken before the body is read; :class:`UploadError` 429 when full."""
        return self._slot(self._receiving, owner, MAX_RECEIVING, MAX_RECEIVING_PER_USER, "arriving")

    def check_slot(self, owner: str):
        """A place among the model checks running (:data:`MAX_SCANS`, :data:`MAX_SCANS_PER_USER`), taken once the
        body has arrived; :class:`UploadError` 429 when full."""
        return self._slot(self._checking, owner, MAX_SCANS, MAX_SCANS_PER_USER, "being checked")

    def incoming(self, kind: str) -> Path:
        """A fresh name in the folder ``kind`` (``models``/``methods``) for an upload being received: it
        lands there, on the same file system as its final place."""
        return self.root / kind / f".incoming-{secrets.token_hex(8)}{SAFETENSORS if kind == 'models' else '.zip'}"

    # -- models --------------------------------------------------------------------------------
    def models(self) -> list[UploadedModel]:
        return _read_all(UploadedModel, self.models_dir.glob("[0-9a-f]" * 16 + ".json"))

    def model(self, upload_id: str) -> Optional[UploadedModel]:
        if not re.fullmatch(r"[0-9a-f]{16}", upload_id):
            return None
        try:
            return UploadedModel.model_validate_json((self.models_dir / f"{upload_id}.json").read_text())
        except (OSError, ValueError):
            return None

    def track_file(self, up: UploadedModel) -> Path:
        return self.models_dir / f"{up.id}.track.json"

    def add_model(self, received: Path, digest: str, filename: str, architecture: str, dataset: str, owner: str,
                  created_at: str) -> tuple[UploadedModel, bool]:
        """Check the weights file ``received`` (sha256 ``digest``) against ``architecture`` on ``dataset`` in a
        worker process and keep it; returns (the upload, whether it is new). ``received`` is moved or removed."""
        try:
            upload_id = hashlib.sha256(f"{digest}\n{architecture}\n{dataset}".encode()).hexdigest()[:16]
            known = self.model(upload_id)
            if known is not None:
                return known, False
            _quota(owner, self.models(), self.cfg.max_uploads_per_user)
            weights = self.models_dir / f"{digest}{SAFETENSORS}"
            safetensors_header(received)
            try:
                proc = _worker("check-model", str(received), architecture, dataset, str(self.cfg.store), timeout=600)
                result = json.loads(proc.stdout.strip().splitlines()[-1]) if proc.stdout.strip() else {}
            except (subprocess.TimeoutExpired, ValueError):
                result = {}
            if "error" in result or not result:
                raise UploadError(f"model rejected: {result.get('error', 'the check did not finish')}")
            os.replace(received, weights)
            track = upload_track(architecture, dataset, weights, digest, upload_id)
            model = UploadedModel(id=upload_id, sha256=digest, filename=re.sub(r"[^A-Za-z0-9_.\-]", "_", filename)[:120]
                                  or "model.safetensors", size=weights.stat().st_size, owner=owner,
                                  created_at=created_at, architecture=architecture, dataset=dataset, track=track.id,
                                  params=result["params"], tensors=result["tensors"], reference=f"upload:{upload_id}")
            atomic_write_text(self.track_file(model), track.model_dump_json(by_alias=True, indent=1) + "\n")
            atomic_write_text(self.models_dir / f"{upload_id}.json", model.model_dump_json(indent=1) + "\n")
            return model, True
        finally:
            received.unlink(missing_ok=True)
