"""Organizers' commands: ``blind-eval``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from harness.views import leaderboard as lb
from harness.cli.common import (MaxCallTimeoutOpt, MaxCpusOpt, MaxMemoryOpt, MaxWriteOpt, MinFreeOpt, console, friendly,
                                out, parse_list, sandbox_caps)
from harness.files import atomic_write_text
from harness.tracks import load_track

app = typer.Typer()


@app.command("blind-eval")
@friendly
def blind_eval_cmd(
    submissions: Annotated[Path, typer.Option(help="folder of submission bundles (<id>-<version>/)")],
    track: Annotated[str, typer.Option(help="the organizers' track (id or file)")],
    out_dir: Annotated[Path, typer.Option("--out", help="results, leaderboard and status go here")] = Path("blind"),
    data_root: Annotated[Optional[Path], typer.Option(help="the hidden data", envvar="PBENCH_DATA")] = None,
    speedups: Annotated[Optional[str], typer.Option(help="comma-separated (default: the track's)")] = None,
    seeds: Annotated[Optional[str], typer.Option(help="comma-separated (default: the track's)")] = None,
    cache_dir: Annotated[Optional[Path], typer.Option(envvar="PBENCH_CACHE", help="checkpoint cache")] = None,
    call_timeout: Annotated[Optional[float], typer.Option(help="per-call deadline, seconds", min=0.1)] = None,
    run_timeout: Annotated[Optional[float], typer.Option(help="deadline for a whole run's method calls, seconds",
                                                         min=1)] = None,
    max_memory_mb: MaxMemoryOpt = None, max_cpus: MaxCpusOpt = None, max_call_timeout: MaxCallTimeoutOpt = None,
    max_write_mb: MaxWriteOpt = None, min_free_mb: MinFreeOpt = None,
) -> None:
    """Verify and run every submitted image in the sandbox on hidden data; status per submission."""
    from harness.orchestration.blind import blind_eval
    from specs.manifest import SandboxLimits
    cfg = load_track(track)
    caps = SandboxLimits(**sandbox_caps(max_memory_mb=max_memory_mb, max_cpus=max_cpus,
                                        max_call_timeout=max_call_timeout, max_write_mb=max_write_mb))
    results = blind_eval(submissions, cfg, out_dir, data_root=data_root,
                         speedups=parse_list(speedups, float, "--speedups") if speedups is not None else None,
                         seeds=parse_list(seeds, int, "--seeds") if seeds is not None else None, cache_dir=cache_dir,
                         call_timeout=call_timeout, run_timeout=run_timeout, sandbox=caps, min_free_mb=min_free_mb,
                         say=lambda msg: console.print(f"[dim]{msg}[/dim]"))
    for r in results:
        out.print(f"{r.bundle}: {r.status}", highlight=False, soft_wrap=True)
    good = [rec for r in results if r.status == "ok" for rec in r.records]
    table = lb.report(good) if good else "no submission completed\n"
    atomic_write_text(out_dir / "leaderboard.md", table)
    out.print()
    out.print(table, highlight=False, soft_wrap=True, end="")
