"""How runs are named for people: ``method[+regularizer]`` and short digests (a leaf: imports nothing).

One function builds the label everywhere (run directories, events, the leaderboards, the dry run's
estimate, the web API): run directory names are part of the store's layout, so the string never
changes.
"""

from __future__ import annotations

from typing import Optional

#: how "no regularizer" is written where a name is required (plans, leaderboard rows)
NO_REGULARIZER = "-"


def run_label(method: str, regularizer: Optional[str] = None, variant: str = "") -> str:
    """``method[variant][+regularizer]``; a ``regularizer`` of None, "" or ``"-"`` is none."""
    return method + variant + (f"+{regularizer}" if regularizer and regularizer != NO_REGULARIZER else "")


def short(digest: Optional[str], n: int = 12) -> str:
    """The first ``n`` characters of a digest, ``unknown`` for none."""
    return (digest or "unknown")[:n]


def label_of(run) -> str:
    """:func:`run_label` of a run description: anything with ``method.id`` and an optional
    ``regularizer.id`` (a :class:`~harness.protocol.run.RunSpec`, a :class:`~specs.result.ResultRecord`)."""
    return run_label(run.method.id, run.regularizer.id if run.regularizer else None)
