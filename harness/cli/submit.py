"""Method authors' commands: ``check-method``, ``submit``, ``new-method``."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from harness.cli.common import console, friendly, out
from harness.errors import HarnessError
from harness.methods import METHODS_DIR, TEMPLATE_DIR, find_method

app = typer.Typer()


@app.command("check-method")
@friendly
def check_method_cmd(
    method: Annotated[str, typer.Argument(help="method folder (or id)")],
    in_docker: Annotated[bool, typer.Option("--in-docker", help="run the method's image under the docker runner")]
    = False,
    image: Annotated[Optional[str], typer.Option(help="image to run (default pbench/method-<id>:<version>)")] = None,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="also write the report as JSON")] = None,
) -> None:
    """Run the conformance suite on one method; exit 1 if any check fails."""
    from harness.conformance import check_method
    report = check_method(find_method(method), runner="docker" if in_docker else "subprocess", image=image,
                          progress=lambda msg: console.print(f"[dim]{msg}…[/dim]"))
    table = Table("check", "result", "detail", "s")
    for c in report.checks:
        table.add_row(c.name, "[green]pass[/green]" if c.passed else "[red]FAIL[/red]", c.detail, f"{c.seconds:.2f}")
    out.print(table)
    if json_out:
        json_out.write_text(report.model_dump_json(indent=2) + "\n")
    if not report.passed:
        raise typer.Exit(1)


@app.command()
@friendly
def submit(
    method: Annotated[str, typer.Argument(help="method id (a folder in methods/) or a method folder")],
    out_dir: Annotated[Path, typer.Option("--out", help="where the bundle goes")] = Path("submissions"),
    smoke_track: Annotated[str, typer.Option(help="track of the smoke evaluation")] = "digits-resnet18",
    cache_dir: Annotated[Optional[Path], typer.Option(envvar="PBENCH_CACHE", help="checkpoint cache")] = None,
) -> None:
    """Build the method's image, check it in the container, smoke-evaluate it, write a submission bundle."""
    from harness.orchestration.submission import submit as run_submit
    sub, path = run_submit(find_method(method), out_dir, smoke_track=smoke_track, cache_dir=cache_dir,
                           say=lambda msg: console.print(f"[dim]{msg}…[/dim]"))
    m = sub.smoke.metric
    out.print(f"submitted {sub.manifest.id} {sub.manifest.version}: image {sub.image.digest[:19]} "
              f"({sub.image.size_bytes / 2**20:.0f} MB), conformance passed, smoke {m.name} {m.final:.2f} at "
              f"{sub.smoke.speedup.achieved:.2f}x -> {path}", highlight=False, soft_wrap=True)


@app.command("new-method")
@friendly
def new_method(
    name: Annotated[str, typer.Argument(help="method id: lower snake case, e.g. my_method")],
    dest: Annotated[Optional[Path], typer.Option(help="parent folder (default methods/)")] = None,
) -> None:
    """Copy method_template/ to methods/NAME with its id set."""
    if not re.fullmatch(r"[a-z][a-z0-9_]{0,63}", name):
        raise HarnessError(f"method id {name!r} must be lower snake case (e.g. my_method)")
    target = (dest or METHODS_DIR) / name
    if target.exists():
        raise HarnessError(f"{target} already exists")
    shutil.copytree(TEMPLATE_DIR, target, ignore=shutil.ignore_patterns("__pycache__"))
    manifest = json.loads((target / "manifest.json").read_text())
    manifest.update({"id": name, "$schema": "../../specs/schema/manifest.schema.json"})
    (target / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    out.print(f"created {target}: edit method.py, then `pbench-harness check-method {target}`")
