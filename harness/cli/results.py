"""``leaderboard``, ``site``, ``serve``: views computed from result records only."""

from __future__ import annotations

import enum
from pathlib import Path
from typing import Annotated

import typer

from harness.views import leaderboard as lb
from harness.cli.common import console, friendly, out
from harness.errors import HarnessError
from harness.store import Store

app = typer.Typer()

Format = enum.Enum("Format", {f: f for f in ("md", "csv", "html")}, type=str)


def _load(results: Path) -> list:
    """Valid records under ``results``; invalid ones are reported (and make the command exit 1)."""
    store = Store.load(results)
    if not store.records and not store.invalid:
        raise HarnessError(f"{results}: no result records found")
    for msg in store.invalid:
        console.print(f"[yellow]skipped:[/yellow] {msg}", highlight=False, soft_wrap=True)
    return list(store.records.values()), bool(store.invalid)


@app.command()
@friendly
def leaderboard(
    results: Annotated[Path, typer.Argument(help="results folder (searched recursively for result.json)")],
    fmt: Annotated[Format, typer.Option("--format", help="md, csv or html")] = Format.md,
) -> None:
    """Leaderboard (n, mean ± 95% CI over seeds, tie ranks; a section per base checkpoint) from result records."""
    records, invalid = _load(results)
    rows = lb.rows(records)
    for line in lb.base_warnings(records):
        console.print(line, highlight=False, soft_wrap=True)
    if fmt == Format.html:
        from harness.views.site import leaderboard_page
        text = leaderboard_page(records)
    else:
        text = lb.markdown(rows) if fmt == Format.md else lb.to_csv(rows)
    out.print(text, highlight=False, soft_wrap=True, end="")
    if invalid:
        raise typer.Exit(1)


@app.command()
@friendly
def site(
    results: Annotated[Path, typer.Argument(help="results folder")],
    out_dir: Annotated[Path, typer.Option("--out", help="where the pages go")] = Path("site"),
) -> None:
    """Static HTML site: an index and one page per track with tables and plots."""
    from harness.views.site import build_site
    records, invalid = _load(results)
    pages = build_site(records, out_dir)
    out.print(f"wrote {len(pages)} pages to {out_dir}/ (open {out_dir}/index.html, or `pbench-harness serve`)")
    if invalid:
        raise typer.Exit(1)


@app.command()
@friendly
def serve(
    results: Annotated[Path, typer.Argument(help="results folder")],
    port: Annotated[int, typer.Option(help="port on 127.0.0.1")] = 8000,
    out_dir: Annotated[Path, typer.Option("--out", help="where the pages go")] = Path("site"),
) -> None:
    """Build the site and serve it on http://127.0.0.1:PORT (Ctrl-C to stop)."""
    import functools
    import http.server
    from harness.views.site import build_site
    records, _ = _load(results)
    build_site(records, out_dir)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(out_dir))
    with http.server.ThreadingHTTPServer(("127.0.0.1", port), handler) as httpd:
        out.print(f"serving {out_dir}/ on http://127.0.0.1:{port}/")
        httpd.serve_forever()
