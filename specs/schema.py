"""Generate the JSON Schema files in ``specs/schema/`` from the pydantic models.

    python -m specs.schema          # (re)write the files
    python -m specs.schema --check  # exit 1 if a committed file differs

The files are committed; a test fails when they drift from the models.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pydantic import TypeAdapter

from specs.manifest import MethodManifest
from specs.messages import HarnessMessage, MethodMessage
from specs.result import ResultRecord
from specs.submission import ConformanceReport, Submission
from specs.track import TrackConfig

SCHEMA_DIR = Path(__file__).resolve().parent / "schema"

DOCUMENTS = {
    "manifest.schema.json": MethodManifest,
    "track.schema.json": TrackConfig,
    "result.schema.json": ResultRecord,
    "harness-message.schema.json": HarnessMessage,
    "method-message.schema.json": MethodMessage,
    "conformance.schema.json": ConformanceReport,
    "submission.schema.json": Submission,
}


def render(target) -> str:
    schema = TypeAdapter(target).json_schema(by_alias=True)
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"


def generate() -> dict[str, str]:
    return {name: render(target) for name, target in DOCUMENTS.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m specs.schema")
    parser.add_argument("--check", action="store_true", help="fail if the committed files differ")
    args = parser.parse_args(argv)
    stale = []
    for name, text in generate().items():
        path = SCHEMA_DIR / name
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(name)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    if stale:
        print(f"stale schema files: {', '.join(stale)} (run: python -m specs.schema)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
