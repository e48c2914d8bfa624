"""Spec version, and what each version speaks on the wire (a table, one row per version).

A method image works with any harness speaking the same major version. A method's manifest declares the
``spec_version`` it was written for; the harness looks its :class:`Dialect` up here (:func:`dialect_of`) and
speaks that, never comparing version numbers anywhere else. A new minor version adds a row.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

SPEC_VERSION = "1.4"


def spec_major(version: str) -> str:
    return version.split(".", 1)[0]


@dataclass(frozen=True)
class Dialect:
    """What a method declaring ``version`` speaks (the harness adapts to it; the SDK answers whatever each
    request asks, so a method built on a newer SDK still speaks every older dialect)."""

    version: str
    #: sparse training: ``"dense"`` (1.0: the groups and dense gradients every step) or ``"compact"`` (1.1: the
    #: groups sent once, ``same_groups`` afterwards, and per-channel scales in ``scales_file`` allowed)
    regularizer: Literal["dense", "compact"]
    #: where the method puts its replies' tensors: ``"files"`` it writes into the exchange directory (which it may
    #: then write), or ``"inline"`` on the socket (1.3, ``inline_reply``: the directory is read-only to it)
    replies: Literal["files", "inline"]
    #: what the version added, for people
    adds: str


#: every version, oldest first (the last is :data:`SPEC_VERSION`)
DIALECTS: tuple[Dialect, ...] = (
    Dialect("1.0", "dense", "files", "the protocol: hello, score, regularize, shutdown"),
    Dialect("1.1", "compact", "files", "compact regularizer exchange (groups once, per-channel scales)"),
    Dialect("1.2", "compact", "files", "no wire change (records: the Slurm job, the recipe-swap recipe)"),
    Dialect("1.3", "compact", "inline", "replies' tensors on the socket; a read-only exchange directory"),
    Dialect("1.4", "compact", "inline", "no wire change (records: latency intervals, deployment runtimes)"),
)


def _minor(version: str) -> tuple[int, int] | None:
    try:
        major, minor = (int(x) for x in version.split(".")[:2])
    except ValueError:
        return None
    return major, minor


def dialect_of(spec_version: str) -> Dialect:
    """The dialect of a method declaring ``spec_version``: its row, or for a version this table does not
    hold, the newest row not above it (a later minor speaks at least that); 1.0 for an unreadable one."""
    declared = _minor(spec_version)
    known = [d for d in DIALECTS if declared is not None and _minor(d.version) <= declared]
    return known[-1] if known else DIALECTS[0]
