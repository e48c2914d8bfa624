"""Named registries: one way in, duplicates raise, unknown names suggest close ones, ``get`` returns the
entry itself, type-checked (a leaf, as in timm: builders import it, never the reverse).

Heavy entries are registered lazily as ``"module:attr"`` strings, resolved on the first ``get``, so that
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
    """Entries by name: :meth:`get` returns the entry itself, resolved and type-checked.

    ``of`` is what every entry is: an instance of it, or with ``classes=True`` a subclass of it (runners,
    tasks). An entry registered as a ``"module:attr"`` string is imported on its first :meth:`get`, never
    before, and so is an ``of`` given as such a string: a registry of heavy classes imports nothing heavy
    until one is asked for. :meth:`check` says whether a name is known without resolving anything.
    """

    def __init__(self, kind: str, of: Union[type, str] = object, classes: bool = False):
        self.kind = kind
        self._of, self._classes = of, classes
        self._entries: dict[str, Union[T, str]] = {}
        self._resolved: dict[str, T] = {}

    def register(self, name: str, entry: Union[T, str]) -> Union[T, str]:
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        self._entries[name] = entry
        return entry

    def decorator(self, fn: T) -> T:
        """``@REGISTRY.decorator`` registers a factory under its function name."""
        return self.register(fn.__name__, fn)  # type: ignore[attr-defined,return-value]

    def check(self, name: str) -> None:
        """Raise :class:`UnknownName` (one line, with close names) unless ``name`` is registered."""
        if name not in self._entries:
            raise UnknownName(self.kind, name, list(self._entries))

    def get(self, name: str) -> T:
        """The entry ``name``: imported if it was registered as ``"module:attr"``, and checked against
        ``of`` (TypeError naming the entry otherwise). Raises :class:`UnknownName` for unknown names."""
        if name in self._resolved:
            return self._resolved[name]
        self.check(name)
        entry = self._entries[name]
        obj = resolve(entry) if isinstance(entry, str) else entry
        of = resolve(self._of) if isinstance(self._of, str) else self._of
        ok = isinstance(obj, type) and issubclass(obj, of) if self._classes else isinstance(obj, of)
        if not ok:
            what = f"a subclass of {of.__qualname__}" if self._classes else f"a {getattr(of, '__qualname__', of)}"
            raise TypeError(f"{self.kind} {name!r} ({entry if isinstance(entry, str) else type(entry).__name__}) "
                            f"is {obj!r}, expected {what}")
        self._resolved[name] = obj
        return obj

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
