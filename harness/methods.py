"""Method discovery: every folder with a ``manifest.json`` under ``methods/``
(and under each directory in ``$PBENCH_METHODS_PATH``) is a method, named by
its manifest id. ``--method`` also accepts a path to a method folder."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from harness.errors import HarnessError
from harness.registry import Registry
from specs.manifest import MethodLoadError, MethodManifest, load_manifest

REPO_ROOT = Path(__file__).resolve().parents[1]
METHODS_DIR = REPO_ROOT / "methods"
TEMPLATE_DIR = REPO_ROOT / "method_template"


@dataclass(frozen=True)
class MethodSource:
    id: str
    path: Path
    manifest: MethodManifest


def search_path() -> list[Path]:
    extra = [Path(p) for p in os.environ.get("PBENCH_METHODS_PATH", "").split(os.pathsep) if p]
    return [METHODS_DIR, *extra]


def discover() -> Registry[MethodSource]:
    registry: Registry[MethodSource] = Registry("method", of=MethodSource)
    for root in search_path():
        if not root.is_dir():
            continue
        for manifest_path in sorted(root.glob("*/manifest.json")):
            source = load_source(manifest_path.parent)
            if source.id in registry:
                raise HarnessError(f"method id {source.id!r} is defined twice: {registry.get(source.id).path} "
                                   f"and {source.path}")
            registry.register(source.id, source)
    return registry


def providing(what: str) -> list[MethodSource]:
    """The discovered methods that provide ``what`` ("importance" or "regularizer"), by id."""
    registry = discover()
    return [registry.get(m) for m in registry.names() if what in registry.get(m).manifest.provides]


def load_source(path: Path) -> MethodSource:
    try:
        manifest = load_manifest(path)
    except MethodLoadError as e:
        raise HarnessError(str(e)) from None
    return MethodSource(manifest.id, Path(path).resolve(), manifest)


def find_method(name_or_path: str) -> MethodSource:
    """A registered id (always the registered method, whatever the working directory holds), or a path to
    a method folder."""
    path = Path(name_or_path)
    if os.sep not in name_or_path and name_or_path in discover().names():
        return discover().get(name_or_path)
    if os.sep in name_or_path or (path.is_dir() and (path / "manifest.json").exists()):
        if not (path / "manifest.json").is_file():
            raise HarnessError(f"{path}: not a method folder (no manifest.json)")
        return load_source(path)
    return discover().get(name_or_path)
