"""Generated parts of README.md (tables from the registries), between marker comments.

    python -m harness.docs          # rewrite README.md
    python -m harness.docs --check  # exit 1 when README.md is stale (a test runs this)
"""

from __future__ import annotations

import argparse
import re
import sys
from typing import Callable

from harness.methods import REPO_ROOT

README = REPO_ROOT / "README.md"


def md_table(columns: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _methods() -> str:
    from harness.cli.listing import METHOD_COLUMNS, methods_table
    return md_table(METHOD_COLUMNS, methods_table())


def _tracks() -> str:
    from harness.cli.listing import TRACK_COLUMNS, tracks_table
    return md_table(TRACK_COLUMNS, tracks_table())


def _cli() -> str:
    from typer.main import get_command
    from harness.cli import app
    group = get_command(app)
    rows = [[f"`pbench-harness {name}`", (cmd.help or "").strip().splitlines()[0]]
            for name, cmd in group.commands.items()]
    return md_table(["command", "what it does"], rows)


#: result records of the digits leaderboard (committed; produced by `make digits-leaderboard`)
DIGITS_RESULTS = REPO_ROOT / "benchmarks" / "results" / "digits-resnet18"


def _digits() -> str:
    from harness.views import leaderboard as lb
    from harness.store import Store
    store = Store.load(DIGITS_RESULTS) if DIGITS_RESULTS.is_dir() else Store()
    if store.invalid:
        raise ValueError(f"invalid records in {DIGITS_RESULTS}: {store.invalid[0]}")
    if not store.records:
        return "(no results yet: run `make digits-leaderboard`)"
    keep = ["Speedup", "Rank", "Importance", "Regularizer", "Pruned", "Final", "Δ", "Params", "Achieved", "Latency",
            "Step (s)", "Reg (s)"]
    idx = [lb.COLUMNS.index(c) for c in keep]
    rows = [[lb.cells(r)[i] for i in idx] for r in lb.rows(list(store.records.values()))]
    return md_table(keep, rows)


SECTIONS: dict[str, Callable[[], str]] = {"methods": _methods, "tracks": _tracks, "cli": _cli, "digits": _digits}


def render(text: str) -> str:
    for name, make in SECTIONS.items():
        pattern = re.compile(rf"(<!-- BEGIN {name} -->\n).*?(<!-- END {name} -->)", re.S)
        if not pattern.search(text):
            raise ValueError(f"README.md has no '<!-- BEGIN {name} -->' ... '<!-- END {name} -->' block")
        text = pattern.sub(lambda m: m.group(1) + make() + "\n" + m.group(2), text)
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness.docs")
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args(argv)
    current = README.read_text()
    fresh = render(current)
    if args.check:
        if fresh != current:
            print("README.md is stale: run `python -m harness.docs`", file=sys.stderr)
            return 1
        return 0
    README.write_text(fresh)
    return 0


if __name__ == "__main__":
    sys.exit(main())
