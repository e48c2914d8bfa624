"""Organizers' blind evaluation of submission bundles on hidden data.

For every ``<submissions>/<id>-<version>/`` bundle: validate ``submission.json``;
reject a manifest asking for more resources than the organizers' caps
(:mod:`harness.runners.sandbox`); check the image archive's sha256, that it holds
exactly the submitted image (its content digest) and names no tag but the
submission's own; load it with every tag removed (:mod:`harness.orchestration.image_archive`:
loading creates no tag and moves none; the own tag is added only where it is free);
then run it in the sandbox (docker runner, by image digest, never by tag) on the
organizer's track and data. One broken or malicious bundle never stops or corrupts
the others. Reasons shown to submitters are redacted of hidden-data details (paths).
No bundle is loaded and no run started while the disk is nearly full
(:mod:`harness.orchestration.preflight`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from pydantic import ValidationError

from harness.errors import HarnessError
from harness.methods import MethodSource
from harness.orchestration.image_archive import BadArchive, foreign_tags, inspect_archive, load_untagged
from harness.orchestration.preflight import check_free_space
from harness.plan import check_run
from harness.protocol.run import RunSpec, evaluate
from harness.runners.docker_runner import docker_client, image_tag
from harness.runners.sandbox import Limits, ResourcesRejected, check_resources, limits_for
from harness.files import atomic_write_text, sha256_file
from specs.base import explain
from specs.manifest import SandboxLimits
from specs.result import ResultRecord
from specs.submission import Submission
from specs.track import TrackConfig

SUBMISSION_FILE = "submission.json"


class Rejected(Exception):
    """The bundle is not what it claims to be; nothing of it runs."""


@dataclass
class BlindResult:
    bundle: str
    status: str  # ok | failed: <reason> | timeout | rejected: <reason>
    method: Optional[str] = None
    records: list[ResultRecord] = field(default_factory=list)

    def as_json(self) -> dict:
        return {"bundle": self.bundle, "status": self.status, "method": self.method,
                "runs": [{"speedup": r.speedup.target, "seed": r.seed, "status": r.status} for r in self.records]}


def load_bundle(bundle: Path) -> Submission:
    path = bundle / SUBMISSION_FILE
    if not path.is_file() or path.is_symlink():  # a FIFO would block the read, a link leave the bundle
        raise Rejected(f"no {SUBMISSION_FILE} (a regular file)")
    try:
        return Submission.model_validate_json(path.read_bytes())
    except OSError:
        raise Rejected(f"no {SUBMISSION_FILE}") from None
    except ValidationError as e:
        raise Rejected(f"invalid {SUBMISSION_FILE}: {explain(e)}") from None


def check_bundle(sub: Submission, limits: Limits) -> None:
    """What ``submission.json`` alone must pass: the submission's own image name, the organizers' caps."""
    own = image_tag(sub.manifest)
    if sub.image.tag != own:
        raise Rejected(f"image tag {sub.image.tag!r} is not the submission's own ({own})")
    try:
        check_resources(sub.manifest, limits)
    except ResourcesRejected as e:
        raise Rejected(str(e)) from None


def load_image(bundle: Path, sub: Submission) -> str:
    """Load the bundle's image into the engine without letting it name any tag; returns its digest
    once verified. The submission's own tag is added only if no image holds it yet."""
    archive = bundle / sub.image.archive
    if not archive.is_file() or archive.is_symlink():
        raise Rejected(f"image archive {sub.image.archive} missing")
    if sha256_file(archive) != sub.image.archive_sha256:
        raise Rejected("image archive checksum mismatch")
    try:
        info = inspect_archive(archive)
    except BadArchive as e:
        raise Rejected(str(e)) from None
    if info.digest != sub.image.digest:
        raise Rejected("digest mismatch")
    others = foreign_tags(info, sub.image.tag)
    if others:
        raise Rejected(f"image archive carries other tags: {', '.join(others)} (a bundle may name only its own, "
                       f"{sub.image.tag})")
    try:
        ids = load_untagged(archive)
    except Exception as e:  # not loadable by the engine
        raise Rejected(f"image archive cannot be loaded ({type(e).__name__})") from None
    if ids != {sub.image.digest}:
        raise Rejected("digest mismatch")
    _tag_if_free(sub.image.digest, sub.image.tag)
    return sub.image.digest


def _tag_if_free(digest: str, tag: str) -> None:
    import docker.errors
    client = docker_client()
    try:
        client.images.get(tag)
        return  # held (by this image, or by another that must keep it): runs go by digest anyway
    except docker.errors.ImageNotFound:
        pass
    repo, _, version = tag.rpartition(":")
    client.images.get(digest).tag(repo, version)


def redact(text: str, secrets: list[str]) -> str:
    for s in sorted((s for s in secrets if s), key=len, reverse=True):
        text = text.replace(s, "<hidden>")
    return text


def _status(records: list[ResultRecord], secrets: list[str]) -> str:
    failed = [r for r in records if r.status != "ok"]
    if not failed:
        return "ok"
    error = failed[0].error or "unknown error"
    if "did not answer" in error or "deadline" in error:
        return "timeout"
    return f"failed: {redact(error, secrets)}"


def blind_eval(submissions: Path, track: TrackConfig, out: Path, data_root: Optional[Path] = None,
               speedups: Optional[list[float]] = None, seeds: Optional[list[int]] = None,
               cache_dir: Optional[Path] = None, call_timeout: Optional[float] = None,
               run_timeout: Optional[float] = None, say: Optional[Callable[[str], None]] = None,
               sandbox: Optional[SandboxLimits] = None, min_free_mb: Optional[float] = None) -> list[BlindResult]:
    """Evaluate every bundle; ``sandbox`` holds the organizers' caps (unset fields: the track's
    ``sandbox``, then the defaults). Raises :class:`~harness.orchestration.preflight.LowDisk`
    instead of loading a bundle or starting a run with less than ``min_free_mb`` free."""
    say = say or (lambda msg: None)
    limits = limits_for("docker", sandbox, track.sandbox)
    if not Path(submissions).is_dir():
        raise HarnessError(f"{submissions}: not a folder (of submission bundles)")
    bundles = sorted(p for p in Path(submissions).iterdir() if p.is_dir() and not p.name.startswith("."))
    if not bundles:
        raise HarnessError(f"{submissions}: no submission bundles")
    secrets = [str(Path(data_root).resolve()), str(data_root)] if data_root else []
    # one base for every submission (and part of every run key): resolved, and checked, once
    from harness.tasks import base_sha256
    base = base_sha256(track, data_root, cache_dir)
    results: list[BlindResult] = []
    for bundle in bundles:
        say(f"{bundle.name}: verifying")
        try:
            sub = load_bundle(bundle)
            check_bundle(sub, limits)
            check_free_space(out, True, min_free_mb, before=f"loading {bundle.name}")
            digest = load_image(bundle, sub)
        except Rejected as e:
            results.append(BlindResult(bundle.name, f"rejected: {e}"))
            continue
        except HarnessError:
            raise  # the organizers' problem (no engine, no disk): not the bundle's
        except Exception as e:  # a hostile bundle the checks did not foresee: this bundle fails, the others run
            results.append(BlindResult(bundle.name, f"rejected: unreadable bundle ({type(e).__name__})"))
            continue
        source = MethodSource(sub.manifest.id, bundle.resolve(), sub.manifest)
        records = []
        for speedup in speedups or track.pruning.speedups:
            for seed in seeds or track.seeds:
                say(f"{bundle.name}: {speedup:g}x seed {seed}")
                check_free_space(out, True, min_free_mb, before=f"starting {bundle.name} {speedup:g}x seed {seed}")
                spec = RunSpec(track=track, method=source, speedup=speedup, seed=seed, runner="docker",
                               runner_options={"image": digest}, out=Path(out) / "results", data_root=data_root,
                               cache_dir=cache_dir, call_timeout=call_timeout, run_timeout=run_timeout,
                               save_models=False, sandbox=sandbox, base_sha256=base)
                check_run(spec)  # built without a plan: the plan's checks
                record, _ = evaluate(spec)
                records.append(record)
        results.append(BlindResult(bundle.name, _status(records, secrets), sub.manifest.id, records))
    atomic_write_text(Path(out) / "status.json",
                      json.dumps([r.as_json() for r in results], indent=2) + "\n")
    return results
