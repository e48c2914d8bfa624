"""``pbench-harness``: thin Typer CLI. Parse -> validated config -> library call.

One module per command group; the root app composes them. Library code never
prints or exits; this package turns HarnessError/UnknownName into a one-line
message and exit code 2, and failed runs into exit code 1.
"""

from __future__ import annotations

import typer

from harness.cli import evaluate, listing, organizers, results, submit
from harness.cli import pretrain
from harness import stopping

app = typer.Typer(name="pbench-harness", no_args_is_help=True, add_completion=False,
                  pretty_exceptions_enable=False,
                  help="PruningBench harness: evaluate structural pruning methods under one fixed protocol.")
app.add_typer(evaluate.app)
app.add_typer(listing.app)
app.add_typer(results.app)
app.add_typer(pretrain.app)
app.add_typer(submit.app)
app.add_typer(organizers.app)


def main() -> None:
    stopping.install()  # a kill or a queue's cancel unwinds: method processes and their folders closed
    app()
