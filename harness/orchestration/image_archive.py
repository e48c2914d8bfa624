"""Image archives (``docker save`` output) from submitters: read what they claim, load them safely.

``docker load`` applies every tag an archive names (``manifest.json``'s ``RepoTags``, the legacy
``repositories`` file, an OCI ``index.json``'s image-name annotations), moving existing tags onto
the loaded image: a bundle could take over ``pbench/method-base:1`` or a reference method's tag,
and every later build or run by that tag would run the submitter's code. So:

- :func:`inspect_archive` reads the archive's metadata without loading anything, refusing archives
  the engine would read differently from us (duplicate or linked metadata members, paths outside the
  archive, more than one image);
- :func:`load_untagged` streams the archive to the engine with every tag removed, so loading
  creates no tag and moves none; the caller tags the image itself, if at all.
"""

from __future__ import annotations

import json
import os
import posixpath
import tarfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from harness.errors import HarnessError

MANIFEST, REPOSITORIES, INDEX = "manifest.json", "repositories", "index.json"
METADATA = (MANIFEST, REPOSITORIES, INDEX)
#: OCI index annotations that name (tag) an image on load
NAME_ANNOTATIONS = ("io.containerd.image.name", "org.opencontainers.image.ref.name")
MAX_METADATA_BYTES = 4 << 20


class BadArchive(HarnessError):
    """The archive is not a single-image ``docker save`` archive we can read unambiguously."""


@dataclass(frozen=True)
class ArchiveInfo:
    digest: str          # the image ID: ``sha256:`` + the config's digest
    tags: frozenset      # every name loading it would apply (repo:tag, as written in the archive)


def _name(member: tarfile.TarInfo) -> str:
    return posixpath.normpath(member.name)  # "./manifest.json" and "a/../manifest.json" land where it does


def _members(tar: tarfile.TarFile) -> dict[str, tarfile.TarInfo]:
    """The metadata members; raises BadArchive on anything the engine could read otherwise."""
    found: dict[str, tarfile.TarInfo] = {}
    for member in tar:
        name = _name(member)
        if name.startswith("/") or name == ".." or name.startswith("../"):
            raise BadArchive(f"image archive member {member.name!r} points outside the archive")
        if name in METADATA:
            if name in found:
                raise BadArchive(f"image archive holds {name} twice")
            if not member.isreg():
                raise BadArchive(f"image archive member {name} is not a regular file")
            if member.size > MAX_METADATA_BYTES:
                raise BadArchive(f"image archive member {name} is {member.size} bytes")
            found[name] = member
    return found


def _json(tar: tarfile.TarFile, member: tarfile.TarInfo):
    try:
        return json.loads(tar.extractfile(member).read())
    except ValueError as e:
        raise BadArchive(f"image archive {member.name} is not JSON ({str(e)[:80]})") from None


def inspect_archive(path: Path) -> ArchiveInfo:
    """The one image an archive holds and every tag loading it would apply."""
    try:
        with tarfile.open(path, "r:") as tar:
            members = _members(tar)
            if MANIFEST not in members:
                raise BadArchive("image archive has no manifest.json (not `docker save` output)")
            manifest = _json(tar, members[MANIFEST])
            repositories = _json(tar, members[REPOSITORIES]) if REPOSITORIES in members else {}
            index = _json(tar, members[INDEX]) if INDEX in members else {}
    except (tarfile.TarError, OSError) as e:
        raise BadArchive(f"image archive cannot be read ({type(e).__name__})") from None
    if not isinstance(manifest, list) or len(manifest) != 1 or not isinstance(manifest[0], dict):
        raise BadArchive(f"image archive must hold exactly one image (its manifest.json lists "
                         f"{len(manifest) if isinstance(manifest, list) else 'no list of'} images)")
    entry = manifest[0]
    config = entry.get("Config")
    if not isinstance(config, str):
        raise BadArchive("image archive manifest.json has no Config")
    hexdigest = posixpath.basename(config).removesuffix(".json")
    tags = set(_strings(entry.get("RepoTags") or [], "manifest.json RepoTags"))
    if not isinstance(repositories, dict):
        raise BadArchive("image archive repositories is not an object")
    for repo, named in repositories.items():
        if not isinstance(named, dict):
            raise BadArchive("image archive repositories is malformed")
        tags |= {f"{repo}:{tag}" for tag in named}
    for m in (index.get("manifests") or []) if isinstance(index, dict) else []:
        annotations = (m.get("annotations") or {}) if isinstance(m, dict) else {}
        tags |= {str(annotations[a]) for a in NAME_ANNOTATIONS if a in annotations}
    return ArchiveInfo(digest=f"sha256:{hexdigest}", tags=frozenset(tags))


def _strings(value, what: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise BadArchive(f"image archive {what} is not a list of names")
    return value


def foreign_tags(info: ArchiveInfo, own: str) -> list[str]:
    """The names in the archive other than ``own`` (``repo:tag``; an OCI ref name may be the bare tag or
    carry the default registry)."""
    repo, _, tag = own.rpartition(":")
    same = {own, tag, f"docker.io/{own}", f"docker.io/library/{own}"}
    return sorted(t for t in info.tags if t not in same)


def _untagged(path: Path, out) -> None:
    """Copy the archive to the file ``out`` with every tag removed (metadata rewritten, the rest verbatim)."""
    with tarfile.open(path, "r:") as src, tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as dst:
        for member in src:
            name = _name(member)
            if name == REPOSITORIES:
                continue
            if name in (MANIFEST, INDEX) and member.isreg():
                data = json.loads(src.extractfile(member).read())
                if name == MANIFEST:
                    for entry in data:
                        entry["RepoTags"] = None
                else:
                    for m in data.get("manifests") or []:
                        for a in NAME_ANNOTATIONS:
                            (m.get("annotations") or {}).pop(a, None)
                body = json.dumps(data).encode()
                info = tarfile.TarInfo(member.name)
                info.size, info.mode, info.mtime = len(body), member.mode, member.mtime
                dst.addfile(info, _Bytes(body))
            else:
                dst.addfile(member, src.extractfile(member) if member.isreg() else None)


class _Bytes:
    def __init__(self, data: bytes):
        self.data, self.pos = data, 0

    def read(self, n: int = -1) -> bytes:
        end = len(self.data) if n < 0 else self.pos + n
        chunk, self.pos = self.data[self.pos:end], min(end, len(self.data))
        return chunk


def untagged_stream(path: Path, chunk: int = 1 << 20) -> Iterator[bytes]:
    """The archive with every tag removed, as a stream of chunks (no copy on disk): a thread rewrites
    it into a pipe that this generator drains."""
    read_fd, write_fd = os.pipe()
    error: list[BaseException] = []

    def produce() -> None:
        try:
            with os.fdopen(write_fd, "wb") as w:
                _untagged(path, w)
        except BaseException as e:  # noqa: BLE001 - re-raised in the consumer
            error.append(e)

    thread = threading.Thread(target=produce, daemon=True)
    thread.start()
    with os.fdopen(read_fd, "rb") as r:
        while data := r.read(chunk):
            yield data
    thread.join()
    if error:
        raise BadArchive(f"image archive cannot be read ({type(error[0]).__name__})")


def load_untagged(path: Path) -> set[str]:
    """Load the archive's image into the engine without applying any tag; returns the loaded IDs."""
    from harness.runners.docker_runner import docker_client
    images = docker_client().images.load(untagged_stream(path))
    return {img.id for img in images}
