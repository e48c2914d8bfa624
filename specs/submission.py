"""Conformance reports and submission bundles (``submissions/<id>-<version>/submission.json``)."""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field, model_validator

from specs.base import Sha256, Strict, Versioned
from specs.manifest import MethodManifest
from specs.result import ResultRecord


class CheckResult(Strict):
    name: str
    passed: bool
    detail: str = ""
    seconds: float = 0.0


class ConformanceReport(Versioned):
    """What ``pbench-harness check-method`` found; ``passed`` is true iff every check passed."""

    method_id: str
    method_version: str
    runner: Literal["inprocess", "subprocess", "docker"]
    image_digest: Optional[str] = None
    checks: list[CheckResult] = Field(min_length=1)
    passed: bool

    @model_validator(mode="after")
    def _consistent(self) -> "ConformanceReport":
        if self.passed != all(c.passed for c in self.checks):
            raise ValueError("passed must equal all(check.passed)")
        return self


class ImageInfo(Strict):
    tag: str
    digest: str = Field(pattern=r"^sha256:[0-9a-f]{64}$", description="image ID (content digest of its config)")
    archive: str = Field("image.tar", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$",
                         description="`docker save` of the image: a file name beside submission.json")
    archive_sha256: Sha256
    size_bytes: int = Field(ge=0)


class Submission(Versioned):
    """A method submitted for (blind) evaluation: everything an organizer needs, nothing else."""

    manifest: MethodManifest
    image: ImageInfo
    conformance: ConformanceReport
    smoke: ResultRecord = Field(description="the smoke evaluation on the embedded default track")
    harness_version: str
    created_at: str

    @model_validator(mode="after")
    def _consistent(self) -> "Submission":
        if not self.conformance.passed:
            raise ValueError("a submission needs a passed conformance report")
        if self.smoke.status != "ok":
            raise ValueError("a submission needs an ok smoke evaluation")
        if self.conformance.image_digest != self.image.digest:
            raise ValueError("conformance was run on another image")
        return self
