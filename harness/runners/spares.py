"""Spare method processes: the next run's method, launched while this run retrains.

A method's start (a Python process importing torch, or a container) takes one to a few seconds, and a
run waits for it in its prune stage. So :func:`~harness.protocol.run.evaluate` launches its method as it
begins, beside the base stage. And a sweep knows which method its next run needs: once a run's prune
stage has closed its method, the sweep's worker launches a *spare* for the next run when that run's method
is this run's (never another method's: its code would run while this run retrains and its latency is
measured). A spare is a client whose process (or container) has started and waits for its handshake. The
next run takes it over when it asks for a client with the same launch key (``launch_key()``: the runner,
the method's folder and manifest, the device, the organizers' caps, the image). The handshake then
carries that run's own seed and hyperparameters, and its run deadline counts from then.

Every run still gets a process of its own, started fresh: nothing of one run's method lives on into
the next, and a run's result does not depend on whether it took a spare. A spare nobody takes is killed
(at the next :func:`stock`, when a run ends without it and no sweep expects another (:func:`settle`), by
:func:`discard` when the sweep ends, at exit, and when the CLI gets SIGTERM), and one that dies while it
waits is never handed out. One spare at most per process; the runner's caps apply to it as to any method.
"""

from __future__ import annotations

import atexit
import threading
from contextlib import contextmanager
from typing import TYPE_CHECKING, Callable, Iterator, Optional

if TYPE_CHECKING:
    from harness.runners.base import MethodClient

_lock = threading.Lock()
_expected: Optional[Callable[[], "MethodClient"]] = None
_spare: Optional["MethodClient"] = None
#: how many clients were served by a spare in this process (tests and benchmarks read it)
taken = 0


@contextmanager
def expecting(factory: Optional[Callable[[], "MethodClient"]]) -> Iterator[None]:
    """While the block runs, :func:`stock` launches ``factory()`` (an unstarted client of the method the
    next run will ask for; None: no run follows)."""
    global _expected
    previous, _expected = _expected, factory
    try:
        yield
    finally:
        _expected = previous


def stock(like: Optional["MethodClient"] = None) -> None:
    """Launch a spare of the expected client (see :func:`expecting`), replacing one left unused unless it
    is already that (same launch key, still running). ``like``: only if the expected client has ``like``'s
    launch key (a run launches the next run's method only when it is its own: no other method's code runs
    while this run is measured). It is only a head start: a client that cannot be made or launched here is
    dropped, and the run that needs it starts its own and reports what fails."""
    global _spare
    if _expected is None:
        discard()
        return
    try:
        client = _expected()
    except Exception:  # (the next run's own start reports it)
        discard()
        return
    key = client.launch_key()
    if like is not None and key != like.launch_key():
        client.close()
        discard()
        return
    if _spare is not None and key is not None and _spare.launch_key() == key and _spare.launched():
        client.close()  # the spare waiting is already the one expected
        return
    discard()
    try:
        if key is None:
            raise LookupError("this runner launches no spare")
        client.prelaunch()
    except Exception:
        client.close()
        return
    with _lock:
        _spare = client


def take(fresh: "MethodClient") -> "MethodClient":
    """The client a run uses in place of ``fresh`` (unstarted): the spare when it was launched for the
    same key and still runs, with ``fresh``'s session (``fresh`` is closed); else ``fresh``."""
    global _spare, taken
    with _lock:
        spare = _spare
        key = fresh.launch_key()
        if spare is None or key is None or spare.launch_key() != key:
            return fresh
        _spare = None
    if not spare.launched():  # it died while it waited: never handed out
        spare.close()
        return fresh
    spare.take_session(fresh)
    fresh.close()
    taken += 1
    return spare


def current() -> Optional["MethodClient"]:
    """The spare waiting now, if any (for benchmarks and tests: e.g. to wait until it has connected)."""
    return _spare


def settle() -> None:
    """A run has ended: its spare goes unless a sweep expects another run (a run that ended before its prune
    stage, e.g. on a wrong base, leaves no process behind in a long-lived caller)."""
    if _expected is None:
        discard()


def discard() -> None:
    """Kill the spare, if one waits."""
    global _spare
    with _lock:
        spare, _spare = _spare, None
    if spare is not None:
        spare.close()


atexit.register(discard)
