"""Track registry: every ``harness/tracks/*.yaml`` is a validated :class:`TrackConfig`.

``--track`` also accepts a path to a YAML or JSON file.
"""

from __future__ import annotations

import functools
from pathlib import Path

from pydantic import ValidationError

from harness.configs import read_mapping
from harness.errors import HarnessError
from harness.registry import Registry
from specs.base import explain
from specs.track import TrackConfig

TRACKS_DIR = Path(__file__).resolve().parent / "tracks"


def parse_track_file(path: Path) -> TrackConfig:
    path = Path(path)
    data = read_mapping(path, "track file")
    try:
        return TrackConfig.model_validate(data)
    except ValidationError as e:
        raise HarnessError(f"{path}: invalid track: {explain(e)}") from None


@functools.lru_cache(maxsize=1)
def registry() -> Registry[TrackConfig]:
    reg: Registry[TrackConfig] = Registry("track")
    for path in sorted(TRACKS_DIR.glob("*.yaml")):
        track = parse_track_file(path)
        if track.id != path.stem:
            raise HarnessError(f"{path}: track id {track.id!r} must equal the file name")
        reg.register(track.id, track)
    return reg


def load_track(name_or_path: str) -> TrackConfig:
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml", ".json") or path.exists():
        return parse_track_file(path)
    return registry().get(name_or_path)


def track_for(model: str, dataset: str) -> TrackConfig:
    """The registered track for a (model, dataset) pair."""
    matches = [t for t in (registry().get(n) for n in registry().names())
               if t.model.name == model and t.dataset.name == dataset]
    if not matches:
        pairs = sorted(f"{t.model.name}/{t.dataset.name}" for t in (registry().get(n) for n in registry().names()))
        raise HarnessError(f"no track for model {model!r} on dataset {dataset!r} (tracks cover: {', '.join(pairs)}); "
                           f"pass --track FILE for a custom setting")
    return matches[0]


def tracks_of_model(model: str) -> list[TrackConfig]:
    """The registered tracks of a model (``--model`` alone selects its track when it has one)."""
    from harness.models import MODELS
    reg = registry()
    found = [t for t in (reg.get(n) for n in reg.names()) if t.model.name == model]
    if not found:
        MODELS.get(model)  # an unknown model name: suggest close ones
        raise HarnessError(f"model {model!r} has no registered track: give --dataset (or --track FILE)")
    return found
