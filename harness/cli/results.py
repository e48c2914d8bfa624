"""``leaderboard``: tables computed from result records only."""

from __future__ import annotations

import enum
from pathlib import Path
from typing import Annotated

import typer

from harness import leaderboard as lb
from harness.cli.common import console, friendly, out
from harness.errors import HarnessError
from harness.results import find_records, read_record

app = typer.Typer()

Format = enum.Enum("Format", {f: f for f in ("md", "csv")}, type=str)


@app.command()
@friendly
def leaderboard(
    results: Annotated[Path, typer.Argument(help="results folder (searched recursively for result.json)")],
    fmt: Annotated[Format, typer.Option("--format", help="md or csv")] = Format.md,
) -> None:
    """Leaderboard (mean ± std over seeds, ranks per speedup) from result records."""
    paths = find_records(results)
    if not paths:
        raise HarnessError(f"{results}: no result records found")
    records, invalid = [], []
    for p in paths:
        try:
            records.append(read_record(p))
        except HarnessError as e:
            invalid.append(str(e))
    for msg in invalid:
        console.print(f"[yellow]skipped:[/yellow] {msg}", highlight=False, soft_wrap=True)
    rows = lb.rows(records)
    text = lb.markdown(rows) if fmt == Format.md else lb.to_csv(rows)
    out.print(text, highlight=False, soft_wrap=True, end="")
    if invalid:
        raise typer.Exit(1)
