"""Helpers shared by the CLI modules: error handling, progress display, option parsing."""

from __future__ import annotations

import functools
import json
import os
import sys
from typing import Callable, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from harness.errors import HarnessError
from harness.registry import UnknownName

# not a terminal (pipes, CI logs): wide enough that tables are not truncated
console = Console(stderr=True, width=None if sys.stderr.isatty() else 200)
out = Console(width=None if sys.stdout.isatty() else 200)


def fail(message: str, code: int = 2) -> "typer.Exit":
    console.print(f"[red]error:[/red] {message}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


def friendly(fn: Callable) -> Callable:
    """Bad input becomes a one-line message and exit code 2, never a traceback."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (HarnessError, UnknownName) as e:
            raise fail(str(e)) from None
        except KeyboardInterrupt:
            raise fail("interrupted", 130) from None
    return wrapper


def parse_hp(items: Optional[list[str]]) -> dict:
    """``--hp name=value`` (value parsed as JSON when possible: 2, 0.5, true)."""
    out_: dict = {}
    for item in items or []:
        name, sep, raw = item.partition("=")
        if not sep or not name:
            raise HarnessError(f"--hp expects name=value, got {item!r}")
        try:
            out_[name] = json.loads(raw)
        except ValueError:
            out_[name] = raw
    return out_


def parse_list(raw: str, cast: Callable, what: str) -> list:
    try:
        values = [cast(x.strip()) for x in raw.split(",") if x.strip()]
    except ValueError:
        raise HarnessError(f"{what}: cannot parse {raw!r} (expected a comma-separated list)") from None
    if not values:
        raise HarnessError(f"{what}: empty list")
    return values


class ProgressDisplay:
    """Renders the library's progress(stage, done, total, **info) callbacks with rich."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled and not os.environ.get("PBENCH_NO_PROGRESS")
        self._progress: Optional[Progress] = None
        self._tasks: dict[str, int] = {}

    def __enter__(self) -> "ProgressDisplay":
        if self.enabled:
            self._progress = Progress(TextColumn("{task.description:>10}"), BarColumn(), MofNCompleteColumn(),
                                      TimeElapsedColumn(), console=console, transient=True)
            self._progress.__enter__()
        return self

    def __call__(self, stage: str, done: int, total: int, **info) -> None:
        if self._progress is None:
            return
        if stage not in self._tasks:
            self._tasks[stage] = self._progress.add_task(stage, total=total)
        self._progress.update(self._tasks[stage], completed=done, total=total)
        if done >= total:
            self._progress.remove_task(self._tasks.pop(stage))

    def __exit__(self, *exc) -> None:
        if self._progress is not None:
            self._progress.__exit__(*exc)
