"""``methods`` and ``tracks``: what exists (generated from the registries)."""

from __future__ import annotations

import typer
from rich.table import Table

from harness.cli.common import friendly, out
from harness.methods import discover
from harness.tracks import registry as track_registry

app = typer.Typer()


def methods_table() -> list[list[str]]:
    reg = discover()
    return [[s.id, s.manifest.version, s.manifest.name, "+".join(s.manifest.provides),
             ", ".join(s.manifest.observations) or "-"] for s in (reg.get(n) for n in reg.names())]


def tracks_table() -> list[list[str]]:
    reg = track_registry()
    rows = []
    for t in (reg.get(n) for n in reg.names()):
        rows.append([t.id, t.model.name, t.dataset.name, ", ".join(f"{s:g}x" for s in t.pruning.speedups),
                     t.pruning.strategy, t.metric, t.hash()[:12]])
    return rows


METHOD_COLUMNS = ["id", "version", "name", "provides", "observations"]
TRACK_COLUMNS = ["id", "model", "dataset", "speedups", "strategy", "metric", "hash"]


def _show(columns: list[str], rows: list[list[str]]) -> None:
    table = Table(*columns)
    for row in rows:
        table.add_row(*row)
    out.print(table)


@app.command()
@friendly
def methods() -> None:
    """List the methods found in methods/ (and $PBENCH_METHODS_PATH)."""
    _show(METHOD_COLUMNS, methods_table())


@app.command()
@friendly
def tracks() -> None:
    """List the registered tracks."""
    _show(TRACK_COLUMNS, tracks_table())
