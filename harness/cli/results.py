"""``leaderboard``, ``site``: views computed from result records only; ``serve``: the web platform
(:mod:`harness.web`) on a result store."""

from __future__ import annotations

import enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from harness.views import leaderboard as lb
from harness.cli.common import console, friendly, out
from harness.errors import HarnessError
from harness.store import Store

app = typer.Typer()

Format = enum.Enum("Format", {f: f for f in ("md", "csv", "html", "json")}, type=str)


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
    fmt: Annotated[Format, typer.Option("--format", help="md, csv, html or json (json: the cells and the Average "
                                                         "view's Friedman test, critical difference, mean ranks, "
                                                         "control comparisons and power)")] = Format.md,
) -> None:
    """Leaderboard (n, mean ± 95% CI over seeds, tie ranks, critical-difference Average view) from result records."""
    records, invalid = _load(results)
    rows = lb.rows(records)
    for line in lb.warnings(records):
        console.print(line, highlight=False, soft_wrap=True)
    if fmt == Format.html:
        from harness.views.site import leaderboard_page
        text = leaderboard_page(records)
    elif fmt == Format.json:
        import json
        text = json.dumps(lb.to_json(rows), indent=1, allow_nan=False) + "\n"
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
    results: Annotated[Path, typer.Argument(help="the result store (created if missing)", envvar="PBENCH_RESULTS")]
    = Path("results"),
    host: Annotated[str, typer.Option(help="address to bind; anything but loopback needs --token or --users")]
    = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port")] = 8000,
    token: Annotated[Optional[str], typer.Option(help="access token (one user, 'owner'); required beyond loopback",
                                                 envvar="PBENCH_TOKEN")] = None,
    users: Annotated[Optional[Path], typer.Option(help="users file (YAML: users: [{name, token_sha256, "
                                                       "max_queued_runs, admin}])")] = None,
    jobs: Annotated[int, typer.Option(help="local executor: runs of a task in parallel", min=1)] = 1,
    executor: Annotated[str, typer.Option(help="local or slurm (the sweep's executors)")] = "local",
    slurm_config: Annotated[Optional[Path], typer.Option(help="Slurm options file (with --executor slurm)")] = None,
    data_root: Annotated[Optional[Path], typer.Option(help="dataset root", envvar="PBENCH_DATA")] = None,
    cache_dir: Annotated[Optional[Path], typer.Option(help="base checkpoint cache", envvar="PBENCH_CACHE")] = None,
    max_queued_runs: Annotated[int, typer.Option(help="per user: runs waiting or running at once", min=1)] = 200,
    allowed_host: Annotated[Optional[list[str]], typer.Option(help="extra Host name to answer to (behind a proxy)")]
    = None,
    https: Annotated[bool, typer.Option(help="the server sits behind HTTPS (a TLS proxy): session cookies get "
                                             "Secure")] = False,
    session_hours: Annotated[float, typer.Option(help="lifetime of a login session", min=0.01)] = 12,
) -> None:
    """The web platform on the result store: task builder, live runs, leaderboards, uploads, JSON API."""
    import uvicorn
    from pydantic import ValidationError

    from harness.web.app import create_app
    from harness.web.config import ServerConfig, check_access
    from specs.base import explain
    try:
        cfg = ServerConfig(store=results, host=host, port=port, jobs=jobs, executor=executor,
                           slurm_config=slurm_config, users_file=users, data_root=data_root, cache_dir=cache_dir,
                           max_queued_runs=max_queued_runs, allowed_hosts=allowed_host or [], https=https,
                           session_hours=session_hours)
    except ValidationError as e:
        raise HarnessError(f"serve: {explain(e)}") from None
    check_access(cfg, token)
    app = create_app(cfg, token=token)
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    out.print(f"PruningBench platform on http://{shown}:{port}/ (store {cfg.store.resolve()}, executor {executor}"
              f"{f', {jobs} workers' if executor == 'local' else ''}; Ctrl-C stops it, unfinished tasks resume at "
              f"the next start)", highlight=False, soft_wrap=True)
    try:
        uvicorn.run(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=5)
    except KeyboardInterrupt:  # uvicorn re-raises Ctrl-C after its graceful shutdown
        pass
    out.print("stopped (unfinished tasks resume at the next start)")
