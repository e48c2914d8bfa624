"""``make submit``: manifest -> image -> conformance in the container -> smoke evaluation
-> bundle (``submissions/<id>-<version>/``: ``image.tar`` + ``submission.json``).

Each step that fails stops the submission with a one-line reason (HarnessError);
a bundle appears only when every step passed (built in a staging folder, then
moved into place).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Optional

import harness
from harness.conformance import check_method
from harness.errors import HarnessError
from harness.methods import MethodSource
from harness.plan import check_run
from harness.protocol.run import RunSpec, evaluate
from harness.files import atomic_write_text
from harness.runners.docker_runner import BASE_IMAGE, docker_client, image_tag
from harness.tracks import load_track
from specs.submission import ImageInfo, Submission

Say = Callable[[str], None]


def build_image(source: MethodSource, base_image: str = BASE_IMAGE) -> str:
    """Build the method's image from its Dockerfile (no network); returns the tag."""
    import docker.errors
    if not (source.path / "Dockerfile").is_file():
        raise HarnessError(f"{source.path}: no Dockerfile (copy method_template/Dockerfile)")
    client = docker_client()
    try:
        client.images.get(base_image)
    except docker.errors.ImageNotFound:
        raise HarnessError(f"base image {base_image} not found: build it with `make images`") from None
    tag = image_tag(source.manifest)
    try:
        client.images.build(path=str(source.path), tag=tag, buildargs={"BASE_IMAGE": base_image}, rm=True,
                            network_mode="none", labels={"pbench.method": source.manifest.id,
                                                         "pbench.method_version": source.manifest.version})
    except docker.errors.BuildError as e:
        raise HarnessError(f"docker build of {tag} failed: {str(e).splitlines()[0]}") from None
    return tag


def _save_image(tag: str, path: Path) -> tuple[str, int]:
    h, size = hashlib.sha256(), 0
    with open(path, "wb") as f:
        for chunk in docker_client().images.get(tag).save(named=True):
            f.write(chunk)
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size


def submit(source: MethodSource, out_dir: Path, smoke_track: str = "digits-resnet18", smoke_speedup: float = 2.0,
           cache_dir: Optional[Path] = None, say: Optional[Say] = None) -> tuple[Submission, Path]:
    say = say or (lambda msg: None)
    m = source.manifest
    say(f"building image for {m.id} {m.version}")
    tag = build_image(source)
    say("running the conformance suite in the container")
    report = check_method(source, runner="docker", image=tag)
    failed = [c for c in report.checks if not c.passed]
    if failed:
        raise HarnessError(f"conformance failed: {failed[0].name}: {failed[0].detail}")
    say(f"smoke evaluation on {smoke_track} at {smoke_speedup:g}x")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".staging-{m.id}-", dir=out_dir))
    try:
        spec = RunSpec(track=load_track(smoke_track), method=source, speedup=smoke_speedup, seed=0, runner="docker",
                       out=staging / "smoke", cache_dir=cache_dir, save_models=False)
        check_run(spec)  # built without a plan: the plan's checks
        record, _ = evaluate(spec)
        if record.status != "ok":
            raise HarnessError(f"smoke evaluation failed: {record.error}")
        say("saving the image")
        digest_file, size = _save_image(tag, staging / "image.tar")
        shutil.rmtree(staging / "smoke")
        sub = Submission(manifest=m, image=ImageInfo(tag=tag, digest=report.image_digest, archive="image.tar",
                                                     archive_sha256=digest_file, size_bytes=size),
                         conformance=report, smoke=record, harness_version=harness.__version__,
                         created_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"))
        atomic_write_text(staging / "submission.json", sub.model_dump_json(indent=2) + "\n")
        final = out_dir / f"{m.id}-{m.version}"
        if final.exists():
            shutil.rmtree(final)
        staging.rename(final)
        return sub, final
    finally:
        shutil.rmtree(staging, ignore_errors=True)
