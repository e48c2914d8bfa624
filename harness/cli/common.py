"""Helpers shared by the CLI modules: error handling, progress display, option parsing."""

from __future__ import annotations

import functools
import json
import os
import sys
from typing import Callable, Optional

from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from harness.errors import HarnessError
from harness.orchestration.preflight import DEFAULT_MIN_FREE_MB
from harness.registry import UnknownName
from harness.runners.sandbox import DEFAULT_CALL_TIMEOUT_CAP_S, DEFAULT_WRITE_MB

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


# -- the organizers' caps on method containers (docker runner), shared by evaluate, sweep and blind-eval
MaxMemoryOpt = Annotated[Optional[int], typer.Option(
    "--max-memory-mb", min=64, help="docker: reject a method whose manifest asks for more memory, MB (default: half "
                                    "the engine host's)")]
MaxCpusOpt = Annotated[Optional[float], typer.Option(
    "--max-cpus", min=0.01, help="docker: reject a method asking for more CPUs (default and upper bound: the engine "
                                 "host's cores)")]
MaxCallTimeoutOpt = Annotated[Optional[float], typer.Option(
    "--max-call-timeout", min=0.1, help=f"docker: reject a method declaring a longer per-call deadline, seconds "
                                        f"(default {DEFAULT_CALL_TIMEOUT_CAP_S:g})")]
MaxWriteOpt = Annotated[Optional[int], typer.Option(
    "--max-write-mb", min=1, help=f"the most a method may send back in one reply or leave in its exchange directory, "
                                  f"MB (default {DEFAULT_WRITE_MB}); beyond it the method is killed")]
MinFreeOpt = Annotated[Optional[float], typer.Option(
    "--min-free-mb", min=0, envvar="PBENCH_MIN_FREE_MB",
    help=f"start no run with less free space under the results or the Docker data root, MB (default "
         f"{DEFAULT_MIN_FREE_MB})")]
#: CLI option name -> SandboxLimits field
SANDBOX_OPTIONS = {"max_memory_mb": "max_memory_mb", "max_cpus": "max_cpus", "max_call_timeout": "max_call_timeout_s",
                   "max_write_mb": "max_write_mb"}


def sandbox_caps(**options) -> dict:
    """The caps given on the command line, as ``SandboxLimits`` fields (unset ones left out)."""
    return {SANDBOX_OPTIONS[k]: v for k, v in options.items() if v is not None}
