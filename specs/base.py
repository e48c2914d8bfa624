"""Shared pydantic base classes and small types of the spec."""

from __future__ import annotations

import hashlib
import json
from typing import Annotated, Any, ClassVar, Union

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, field_validator

from specs.version import SPEC_VERSION, spec_major


def sha256_json(data: Any) -> str:
    """sha256 (hex) of ``data`` as canonical JSON: sorted keys, no whitespace."""
    return hashlib.sha256(json.dumps(data, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


class Strict(BaseModel):
    """Base of every spec model: unknown fields are errors, models are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    #: fields added after the model was first published: :func:`canonical` leaves them out while they
    #: hold their default, so that adding a field never changes the hash of a document that does not use it
    added_fields: ClassVar[frozenset[str]] = frozenset()


def canonical(model: BaseModel, exclude: set[str] | None = None) -> Any:
    """``model`` as JSON data for hashing: ``model_dump(mode="json")`` without the ``added_fields``
    (of this model and every nested one) that are at their defaults."""
    return _without_added(model, model.model_dump(mode="json", exclude=exclude))


def _without_added(obj: Any, data: Any) -> Any:
    if isinstance(obj, BaseModel) and isinstance(data, dict):
        cls = type(obj)
        added = getattr(cls, "added_fields", frozenset())
        return {k: _without_added(getattr(obj, k), v) for k, v in data.items()
                if not (k in added and getattr(obj, k) == cls.model_fields[k].get_default(call_default_factory=True))}
    if isinstance(obj, dict) and isinstance(data, dict):
        return {k: _without_added(obj.get(k), v) for k, v in data.items()}
    if isinstance(obj, (list, tuple)) and isinstance(data, list):
        return [_without_added(o, v) for o, v in zip(obj, data)]
    return data


class Versioned(Strict):
    """Base of every top-level document/message: carries the spec version."""

    spec_version: str = SPEC_VERSION

    @field_validator("spec_version")
    @classmethod
    def _same_major(cls, v: str) -> str:
        if spec_major(v) != spec_major(SPEC_VERSION):
            raise ValueError(f"spec_version {v!r} is not compatible with this spec ({SPEC_VERSION}); "
                             f"rebuild the method against spec {spec_major(SPEC_VERSION)}.x")
        return v


#: identifiers of methods, tracks, models, datasets: lower snake case.
Identifier = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_\-]{0,63}$")]
#: a plain file name inside the exchange directory (no directories, no ``..``).
ExchangeFile = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_\-][A-Za-z0-9_.\-]{0,127}$")]
#: JSON scalar a hyperparameter may take.
Scalar = Union[bool, int, float, str]
Sha256 = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
PositiveFloat = Annotated[float, Field(gt=0)]


def explain(err: ValidationError) -> str:
    """A pydantic ValidationError as one line: ``field.path: message (+N more)``."""
    first = err.errors()[0]
    loc = ".".join(str(p) for p in first["loc"]) or "value"
    more = f" (+{err.error_count() - 1} more)" if err.error_count() > 1 else ""
    return f"{loc}: {first['msg']}{more}"


def one_line(err: BaseException) -> str:
    """An exception as one line for a record or a reply: ``Type: message`` (whitespace collapsed, at most
    500 characters)."""
    text = " ".join(str(err).split())
    return f"{type(err).__name__}: {text}"[:500]
