"""Named registries: one way in, duplicates raise, unknown names suggest close ones.

Heavy entries are registered lazily as ``"module:attr"`` strings so that
``pbench-harness --help`` imports neither timm nor ultralytics.
"""

from __future__ import annotations

import difflib
import importlib
from typing import Callable, Generic, Iterator, TypeVar, Union

T = TypeVar("T")


class UnknownName(KeyError):
    """A name is not in a registry. ``str()`` is a one-line message with suggestions."""

    def __init__(self, kind: str, name: str, known: list[str]):
        close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
        hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        self.message = f"unknown {kind} {name!r}{hint} (known: {', '.join(sorted(known)) or 'none'})"
        super().__init__(self.message)

    def __str__(self) -> str:
        return self.message


def resolve(target: Union[str, Callable]) -> Callable:
    """Import ``"package.module:attr"`` lazily; callables pass through."""
    if not isinstance(target, str):
        return target
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


class Registry(Generic[T]):
    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str, entry: T) -> T:
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        self._entries[name] = entry
        return entry

    def decorator(self, fn: T) -> T:
        """``@REGISTRY.decorator`` registers a factory under its function name."""
        return self.register(fn.__name__, fn)  # type: ignore[attr-defined]

    def get(self, name: str) -> T:
        try:
            return self._entries[name]
        except KeyError:
            raise UnknownName(self.kind, name, list(self._entries)) from None

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
