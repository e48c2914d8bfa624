"""Reading submitters' image archives without loading them: the one image they hold, every tag
loading them would apply (manifest.json, repositories, OCI index.json), archives the engine could
read differently refused; the untagged copy the harness streams to the engine keeps every byte but
the tags. (Loading through the real engine: tests/test_sandbox_escapes.py.)"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile

import pytest

from harness.orchestration.image_archive import (BadArchive, foreign_tags, inspect_archive, untagged_stream)

OWN = "pbench/method-mine:1.0.0"
CONFIG = json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": []}}).encode()
HEX = hashlib.sha256(CONFIG).hexdigest()
LAYER = b"layer bytes " * 1000


def archive(path, manifest=None, repositories=None, index=None, extra=()):
    """A `docker save`-shaped archive; ``extra``: (TarInfo, bytes or None) members appended."""
    manifest = manifest if manifest is not None else [{"Config": f"{HEX}.json", "RepoTags": [OWN],
                                                       "Layers": ["abc/layer.tar"]}]
    members = [("abc/layer.tar", LAYER), (f"{HEX}.json", CONFIG), ("manifest.json", json.dumps(manifest).encode())]
    if repositories is not None:
        members.append(("repositories", json.dumps(repositories).encode()))
    if index is not None:
        members.append(("index.json", json.dumps(index).encode()))
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for info, data in extra:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def test_a_clean_archive_names_its_image_and_own_tag(tmp_path):
    info = inspect_archive(archive(tmp_path / "a.tar", repositories={"pbench/method-mine": {"1.0.0": "abc"}}))
    assert info.digest == f"sha256:{HEX}"
    assert info.tags == {OWN}
    assert foreign_tags(info, OWN) == []


@pytest.mark.parametrize("where", ["RepoTags", "repositories", "index.json"])
def test_every_other_tag_is_found(where, tmp_path):
    base, victim = "pbench/method-base:1", "pbench/method-magnitude_l2:1.0.0"
    kwargs = {
        "RepoTags": dict(manifest=[{"Config": f"{HEX}.json", "RepoTags": [OWN, victim, base], "Layers": []}]),
        "repositories": dict(repositories={"pbench/method-base": {"1": "abc"},
                                           "pbench/method-magnitude_l2": {"1.0.0": "abc"}}),
        "index.json": dict(index={"manifests": [{"annotations": {
            "io.containerd.image.name": f"docker.io/{base}", "org.opencontainers.image.ref.name": "1.0.0"}},
            {"annotations": {"io.containerd.image.name": victim}}]}),
    }[where]
    info = inspect_archive(archive(tmp_path / "a.tar", **kwargs))
    expected = [f"docker.io/{base}", victim] if where == "index.json" else [base, victim]
    assert foreign_tags(info, OWN) == expected  # the bare ref name "1.0.0" is the own tag's


def _member(name, kind=tarfile.REGTYPE, data=b"[]", link=""):
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, link
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    return info, data if kind == tarfile.REGTYPE else None


@pytest.mark.parametrize("extra, message", [
    ([_member("./manifest.json", data=b"[]")], "holds manifest.json twice"),
    ([_member("repositories", tarfile.SYMTYPE, link="abc/layer.tar")], "repositories is not a regular file"),
    ([_member("../escape")], "points outside the archive"),
    ([_member("/etc/x")], "points outside the archive"),
])
def test_ambiguous_archives_are_refused(extra, message, tmp_path):
    with pytest.raises(BadArchive, match=message):
        inspect_archive(archive(tmp_path / "a.tar", extra=extra))


@pytest.mark.parametrize("manifest, message", [
    ([], "exactly one image"),
    ([{"Config": f"{HEX}.json", "RepoTags": [OWN]}, {"Config": "x.json", "RepoTags": None}], "exactly one image"),
    ([{"RepoTags": [OWN]}], "has no Config"),
    ([{"Config": f"{HEX}.json", "RepoTags": "pbench/method-base:1"}], "RepoTags is not a list"),
])
def test_malformed_manifests_are_refused(manifest, message, tmp_path):
    with pytest.raises(BadArchive, match=message):
        inspect_archive(archive(tmp_path / "a.tar", manifest=manifest))


def test_not_an_archive(tmp_path):
    (tmp_path / "a.tar").write_bytes(b"not a tar at all" * 100)
    with pytest.raises(BadArchive, match="cannot be read|no manifest.json"):
        inspect_archive(tmp_path / "a.tar")


def test_the_untagged_copy_keeps_everything_but_the_tags(tmp_path):
    index = {"manifests": [{"digest": "sha256:" + HEX, "annotations": {
        "io.containerd.image.name": OWN, "org.opencontainers.image.ref.name": "1.0.0", "other": "kept"}}]}
    src = archive(tmp_path / "a.tar", repositories={"pbench/method-base": {"1": "abc"}}, index=index,
                  manifest=[{"Config": f"{HEX}.json", "RepoTags": [OWN, "pbench/method-base:1"],
                             "Layers": ["abc/layer.tar"]}])
    copy = tmp_path / "b.tar"
    copy.write_bytes(b"".join(untagged_stream(src, chunk=4096)))
    assert inspect_archive(copy).tags == frozenset() and inspect_archive(copy).digest == f"sha256:{HEX}"
    with tarfile.open(copy) as tar:
        names = tar.getnames()
        assert "repositories" not in names
        assert tar.extractfile("abc/layer.tar").read() == LAYER
        assert tar.extractfile(f"{HEX}.json").read() == CONFIG
        manifest = json.loads(tar.extractfile("manifest.json").read())
        assert manifest == [{"Config": f"{HEX}.json", "RepoTags": None, "Layers": ["abc/layer.tar"]}]
        assert json.loads(tar.extractfile("index.json").read())["manifests"][0]["annotations"] == {"other": "kept"}
