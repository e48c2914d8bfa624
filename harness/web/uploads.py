"""Uploads: whole pickled models and method folders, kept in the store, never run on the server
outside a sandbox.

Models (``<store>/.web/uploads/models/<sha256>.pt``): a ``torch.save``d ``nn.Module``. It is never
unpickled as such on the server: a worker process lists the globals its pickle references
(``torch.serialization.get_unsafe_globals_in_checkpoint``, which reads without executing), refuses
any that is not an ``nn.Module`` class of torch, torchvision, timm or ultralytics (``posix.system``,
``builtins.eval``, unknown modules), and then loads it with ``weights_only=True`` allowing exactly
those classes, to count its parameters. The upload's reference for a track is
``model: {name: "file:<path>", sha256: <hex>}``.

Methods (``<store>/.web/uploads/methods/<id>-<version>-<sha8>/``): a zip of a method folder
(``manifest.json`` + ``method.py``, at the top or in one folder), unpacked by :func:`safe_extract`
(no absolute paths, ``..``, links or special files; bounded count, sizes and compression ratio,
counted while inflating), then validated as ``check-method`` does: the manifest, then the conformance
suite in a worker process — under the subprocess runner only on a server its owner runs locally,
otherwise in the method's docker image (built from the method template's Dockerfile, no network).
An uploaded method is usable in plans once its checks passed.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import threading
import zipfile
from pathlib import Path, PurePosixPath
from typing import Literal, Optional

from harness.errors import HarnessError
from harness.store import atomic_write_text
from harness.web.config import ServerConfig
from specs.base import Strict

MAX_ENTRIES = 200
MAX_RATIO = 100  # uncompressed / compressed, per entry (a zip bomb compresses ~1000:1)
MAX_DEPTH = 8
_NAME = re.compile(r"^[A-Za-z0-9_.\- ]+$")
#: packages whose nn.Module classes an uploaded model may be made of
MODEL_PACKAGES = ("torch.", "torchvision.", "timm.", "ultralytics.")
MethodStatus = Literal["checking", "passed", "failed", "needs-docker"]


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
    sha256: str
    filename: str
    size: int
    owner: str
    created_at: str
    class_name: str
    params: int
    modules: list[str]
    reference: dict


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
    stripped); returns the files. Raises :class:`UploadError` before writing anything unsafe."""
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError):
        raise UploadError("not a zip archive") from None
    with zf:
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


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


# -- model scan (runs in a worker process) ---------------------------------------------------------
def scan_model(path: Path) -> dict:
    """What a pickled model file is, without running code from it: {class_name, params, modules} or
    {error}. Used by ``python -m harness.web.worker scan-model``."""
    import importlib

    import torch
    import torch.nn as nn
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
    except Exception as e:
        return {"error": f"not a torch.save file ({type(e).__name__})"}
    classes = []
    for name in names:
        module, _, attr = name.rpartition(".")
        if not name.startswith(MODEL_PACKAGES):
            return {"error": f"the pickle references {name}, which is not a module class of torch, torchvision, "
                             f"timm or ultralytics: refused (it could run code)"}
        try:
            obj = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError):
            return {"error": f"the pickle references {name}, which does not exist here"}
        if not (isinstance(obj, type) and issubclass(obj, (nn.Module, torch.Size))):
            return {"error": f"the pickle references {name}, which is not an nn.Module class: refused"}
        classes.append(obj)
    try:
        with torch.serialization.safe_globals(classes):
            model = torch.load(str(path), weights_only=True, map_location="cpu")
    except Exception as e:
        return {"error": f"cannot load it with weights_only=True: {str(e).splitlines()[0][:200]}"}
    if not isinstance(model, nn.Module):
        return {"error": f"it holds a {type(model).__name__}, not a whole model (torch.save(model, path))"}
    return {"class_name": f"{type(model).__module__}.{type(model).__qualname__}",
            "params": sum(p.numel() for p in model.parameters()), "modules": sorted(names)}


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
    return subprocess.run([sys.executable, "-m", "harness.web.worker", *args], capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL, env={**os.environ, "PBENCH_NO_PROGRESS": "1"})


class Uploads:
    def __init__(self, cfg: ServerConfig):
        self.cfg = cfg
        self.root = cfg.web_dir / "uploads"
        self.methods_dir = self.root / "methods"
        self.models_dir = self.root / "models"
        for d in (self.methods_dir, self.models_dir, self.root / "tmp"):
            d.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._checks: list[str] = []
        self._checker: Optional[threading.Thread] = None

    def tmp_file(self) -> Path:
        fd, path = tempfile.mkstemp(dir=self.root / "tmp", prefix="upload-")
        os.close(fd)
        return Path(path)

    # -- methods -------------------------------------------------------------------------------
    def methods(self) -> list[UploadedMethod]:
        return _read_all(UploadedMethod, self.methods_dir.glob("*/upload.json"))

    def method(self, name: str) -> Optional[UploadedMethod]:
        if not re.fullmatch(r"[a-z0-9_\-.]{1,140}", name) or ".." in name:
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
                for other in self.methods():
                    if other.id == m.id and other.version == m.version:
                        if other.sha256 == digest:
                            return other, False
                        raise UploadError(f"{m.id} {m.version} was uploaded before with other content: bump the "
                                          f"version in manifest.json", 409)
                name = f"{m.id}-{m.version}-{digest[:8]}"
                up = UploadedMethod(name=name, id=m.id, version=m.version, provides=list(m.provides), sha256=digest,
                                    size=archive.stat().st_size, owner=owner, created_at=created_at,
                                    runner="subprocess" if self.cfg.local_owner else "docker",
                                    detail="conformance checks queued")
                target = self.methods_dir / name
                atomic_write_text(staging / "upload.json", up.model_dump_json(indent=1) + "\n")
                os.replace(staging, target)
                self._checks.append(name)
                if self._checker is None or not self._checker.is_alive():
                    self._checker = threading.Thread(target=self._check_loop, daemon=True, name="upload-checks")
                    self._checker.start()
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
                if proc.returncode != 0 and (up := self.method(name)) and up.status == "checking":
                    tail = (proc.stderr or proc.stdout).strip().splitlines()
                    self._save_method(up.model_copy(update={
                        "status": "failed", "detail": tail[-1][:300] if tail else f"exit code {proc.returncode}"}))
            except subprocess.TimeoutExpired:
                if (up := self.method(name)) is not None:
                    self._save_method(up.model_copy(update={"status": "failed", "detail": "checks timed out"}))

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

    # -- models --------------------------------------------------------------------------------
    def models(self) -> list[UploadedModel]:
        return _read_all(UploadedModel, self.models_dir.glob("*.json"))

    def add_model(self, upload: Path, filename: str, owner: str, created_at: str) -> tuple[UploadedModel, bool]:
        digest = sha256_file(upload)
        meta = self.models_dir / f"{digest}.json"
        if meta.exists():
            return UploadedModel.model_validate_json(meta.read_text()), False
        try:
            proc = _worker("scan-model", str(upload), timeout=600)
            result = json.loads(proc.stdout.strip().splitlines()[-1]) if proc.stdout.strip() else {}
        except (subprocess.TimeoutExpired, ValueError):
            result = {}
        if "error" in result or not result:
            raise UploadError(f"model rejected: {result.get('error', 'the scan did not finish')}")
        target = self.models_dir / f"{digest}.pt"
        os.replace(upload, target)
        safe_name = re.sub(r"[^A-Za-z0-9_.\-]", "_", filename)[:120] or "model.pt"
        model = UploadedModel(sha256=digest, filename=safe_name, size=target.stat().st_size, owner=owner,
                              created_at=created_at, class_name=result["class_name"], params=result["params"],
                              modules=result["modules"],
                              reference={"name": f"file:{target.resolve()}", "sha256": digest})
        atomic_write_text(meta, model.model_dump_json(indent=1) + "\n")
        return model, True
