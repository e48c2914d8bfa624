"""Config files (tracks, plans, Slurm options): YAML or JSON mappings read with one-line errors."""

from __future__ import annotations

from pathlib import Path

import yaml

from harness.errors import HarnessError


def read_mapping(path: Path, what: str) -> dict:
    """The mapping in YAML/JSON file ``path`` (an empty file is ``{}``); a one-line HarnessError naming
    the file when it cannot be read, is not YAML (with the line), or is not a mapping."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as e:
        raise HarnessError(f"{path}: cannot read {what} ({e.strerror})") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        raise HarnessError(f"{path}: not valid YAML{f' at line {mark.line + 1}' if mark else ''}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise HarnessError(f"{path}: a {what} must be a mapping, got {type(data).__name__}")
    return data
