"""The method manifest: ``manifest.json`` at the top of every method folder.

A method declares what it provides (importance scores and/or regularizer
gradients), which observations the harness must collect for it, its
hyperparameters (with defaults), and resource hints. The harness validates the
manifest before it starts the method and again when the method echoes it in the
handshake.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional

from pydantic import Field, ValidationError, model_validator

from specs.base import Identifier, Scalar, Strict, Versioned, explain

#: What the harness can collect on the track's calibration budget. Every tensor is float32 on
#: CPU and deterministic for a run seed. "Member" layers are the layers of the groups in the
#: request; the calibration budget is the track's ``calibration`` (``specs.track.Calibration``).
#:
#: - ``weights``: every floating-point parameter and buffer of the model (state dict keys).
#: - ``gradients``: the gradient of the mean cross-entropy loss over the calibration set w.r.t.
#:   every parameter (summed over batches, divided by the number of batches).
#: - ``sq_gradients``: per-sample squared gradients, summed over the calibration samples
#:   (the empirical Fisher diagonal, unnormalized), w.r.t. every parameter.
#: - ``inputs``: key ``<layer>`` for every member ``Conv1d``/``Conv2d`` (not transposed) and
#:   ``Linear``, on the first ``activation_samples`` calibration images (N). For each image,
#:   P = min(``positions_per_sample``, T) of the layer's T output positions are sampled without
#:   replacement (seeded by the run seed and the layer name); row ``n*P + p`` holds what the layer
#:   multiplies to produce output position p of image n:
#:   conv: ``[N*P, C_in, kh*kw]``, the receptive-field patch (exactly ``F.unfold`` of the padded
#:   input, so ``out[:, o] = sum_{c,k} W[o, c, k] * row[c, k] + bias[o]``; grouped convs: C_in is
#:   all input channels); linear: ``[N*P, C_in]`` (T = 1 for ``[N, C_in]`` inputs; for
#:   ``[N, ..., C_in]`` inputs the middle dimensions are the positions).
#: - ``outputs``: key ``<layer>`` for every member conv/linear/bn layer pruned along its outputs
#:   (``dim == "out"``), on the first ``output_samples`` calibration images (fewer, at least one,
#:   if they would exceed ``output_budget_mb`` MB in all): the full output
#:   (conv/bn ``[N, C, H, W]``, linear ``[N, ..., F]``), before any following (in-place) activation.
#: - ``output_gradients``: for the same layers and rows as ``inputs`` (same images, same sampled
#:   positions): ``[N*P, C_out]``, ``sqrt(T) * d l_n / d s_{n,t}``, where ``s`` is the layer's
#:   output, ``l_n = -log p(y_n | x_n)`` with ``y_n`` SAMPLED from the model's own predictive
#:   distribution (softmax of the logits, seeded), BatchNorm in eval mode. The ``sqrt(T)`` makes
#:   ``E[a a^T] (x) E[g g^T]`` (means over rows; ``a`` = the ``inputs`` row flattened, with a 1
#:   appended for a bias) the K-FAC Fisher block of Grosse & Martens (2016): ``F ~= T * A_bar (x) G_bar``.
#:   Needs a classifier whose output is ``[N, classes]`` logits.
ObservationKind = Literal["weights", "gradients", "sq_gradients", "inputs", "outputs", "output_gradients"]

Capability = Literal["importance", "regularizer"]

#: what a method that lacks a capability is told (one text per capability, wherever it is checked)
_MISSING = {
    "importance": "importance scores (it is a regularizer: pair it with an importance method)",
    "regularizer": "regularizer (regularizers: the methods whose manifest provides 'regularizer', e.g. group_norm, "
                   "group_lasso, growing_reg, bn_scale_l1)",
}


class HyperParameter(Strict):
    """One hyperparameter of a method, declared as data."""

    type: Literal["bool", "int", "float", "str"]
    default: Scalar
    description: str = ""
    minimum: Optional[float] = None
    maximum: Optional[float] = None
    choices: Optional[list[Scalar]] = None

    @model_validator(mode="after")
    def _default_valid(self) -> "HyperParameter":
        self.check(self.default, "default")
        return self

    def check(self, value: Scalar, name: str = "value") -> Scalar:
        """Validate (and coerce int -> float) one value; raises ValueError with a readable message."""
        py = {"bool": bool, "int": int, "float": (int, float), "str": str}[self.type]
        if isinstance(value, bool) and self.type != "bool" or not isinstance(value, py):
            raise ValueError(f"{name} {value!r} is not of type {self.type}")
        if self.type == "float":
            value = float(value)
        if self.minimum is not None and value < self.minimum:
            raise ValueError(f"{name} {value!r} is below the minimum {self.minimum}")
        if self.maximum is not None and value > self.maximum:
            raise ValueError(f"{name} {value!r} is above the maximum {self.maximum}")
        if self.choices is not None and value not in self.choices:
            raise ValueError(f"{name} {value!r} is not one of {self.choices}")
        return value


class Resources(Strict):
    """Resource hints; the harness enforces them as limits (memory, per-call deadline)."""

    memory_mb: int = Field(2048, ge=64, le=262144)
    cpus: float = Field(1.0, gt=0, le=64)
    call_timeout_s: float = Field(120.0, gt=0, le=86400)
    gpu: bool = False


class Paper(Strict):
    title: str
    url: str = ""
    year: Optional[int] = None


class MethodManifest(Versioned):
    """``manifest.json``: the identity and needs of one pruning method."""

    schema_ref: Optional[str] = Field(None, alias="$schema", exclude=True,
                                      description="editor hint: path of manifest.schema.json; ignored")
    id: Identifier
    version: str = Field(pattern=r"^\d+\.\d+(\.\d+)?([.-][A-Za-z0-9]+)?$")
    name: str = Field(min_length=1, max_length=64, description="display name, e.g. MagnitudeL2")
    description: str = ""
    provides: list[Capability] = Field(min_length=1)
    observations: list[ObservationKind] = Field(default_factory=list)
    hyperparameters: dict[Identifier, HyperParameter] = Field(default_factory=dict)
    resources: Resources = Resources()
    paper: Optional[Paper] = None
    entrypoint: str = Field("method:Method", pattern=r"^[A-Za-z_][A-Za-z0-9_]*:[A-Za-z_][A-Za-z0-9_]*$",
                            description="module:Class inside the method folder")

    @model_validator(mode="after")
    def _unique(self) -> "MethodManifest":
        if len(set(self.provides)) != len(self.provides):
            raise ValueError("provides lists a capability twice")
        if len(set(self.observations)) != len(self.observations):
            raise ValueError("observations lists a kind twice")
        return self

    def require(self, capability: Capability) -> None:
        """Raise ValueError (one line, with a hint) unless the method provides ``capability``."""
        if capability not in self.provides:
            raise ValueError(f"method {self.id!r} provides no {_MISSING[capability]}")

    def resolve_hyperparameters(self, overrides: dict[str, Scalar] | None = None) -> dict[str, Scalar]:
        """Defaults updated by ``overrides``; unknown names and bad values raise ValueError."""
        overrides = dict(overrides or {})
        unknown = sorted(set(overrides) - set(self.hyperparameters))
        if unknown:
            raise ValueError(f"method {self.id!r} has no hyperparameter {unknown[0]!r} "
                             f"(it has: {', '.join(sorted(self.hyperparameters)) or 'none'})")
        return {name: hp.check(overrides.get(name, hp.default), f"hyperparameter {name!r}")
                for name, hp in self.hyperparameters.items()}


class MethodLoadError(Exception):
    """A method folder that cannot be loaded (no or invalid manifest, missing entrypoint)."""


def load_manifest(method_dir: Path) -> MethodManifest:
    """The validated ``manifest.json`` of a method folder (pydantic only: no torch)."""
    path = Path(method_dir) / "manifest.json"
    if not path.is_file():
        raise MethodLoadError(f"{path}: no manifest.json (copy method_template/manifest.json)")
    try:
        return MethodManifest.model_validate_json(path.read_text())
    except ValidationError as e:
        raise MethodLoadError(f"{path}: invalid manifest: {explain(e)}") from None
