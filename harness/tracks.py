"""Track registry: every ``harness/tracks/*.yaml`` is a validated :class:`TrackConfig`.

``--track`` also accepts a path to a YAML or JSON file. :func:`resolve_track` turns what a user names
(a track, or a model and a dataset) into one track: a registered one, or one *derived* from the
dataset's default track with the model replaced (any model reference, see
:mod:`harness.models.refs`), whose own hash then goes into every result. :func:`inapplicable` says
which methods cannot score a track's architecture meaningfully (their manifest's ``requires``).
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Optional

from pydantic import ValidationError

from harness.configs import read_mapping
from harness.errors import HarnessError
from harness.registry import Registry
from specs.base import explain
from specs.track import Checkpoint, ModelRef, TrackConfig

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
    """A registered track id (always the registered track, whatever the working directory holds), else a
    track file."""
    path = Path(name_or_path)
    if name_or_path in registry().names():
        return registry().get(name_or_path)
    if path.suffix in (".yaml", ".yml", ".json") or path.exists():
        return parse_track_file(path)
    return registry().get(name_or_path)


def tracks_of(dataset: str) -> list[TrackConfig]:
    """The registered tracks of ``dataset``, by id."""
    return [t for t in (registry().get(n) for n in registry().names()) if t.dataset.name == dataset]


def default_track(dataset: str) -> TrackConfig:
    """The track a model on ``dataset`` is derived from: its registered track with the smallest id
    (``cifar100-resnet18``, ``digits-resnet18``, ``imagenet-resnet18``...)."""
    from harness.data import DATASETS

    DATASETS.get(dataset)  # unknown dataset: the registry's one-line error with close names
    tracks = tracks_of(dataset)
    if not tracks:
        raise HarnessError(f"dataset {dataset!r} has no registered track to derive one from; pass --track FILE")
    return tracks[0]


def derive_track(base: TrackConfig, model: str) -> tuple[TrackConfig, str]:
    """``base`` with its model replaced by the reference ``model``, and the one-line note saying so.

    The derived track keeps everything else of ``base`` (data, strategy, speedups, budgets, recipes,
    seeds) and has its own id ``<dataset>-<model slug>`` and hash. Its base checkpoint: ``base``'s
    pretraining recipe (the new architecture is trained once and cached, as any track's); for a
    ``file:`` model, the file's own weights (``pretrain`` with 0 epochs); a published checkpoint
    file of ``base`` belongs to ``base``'s architecture, so a model that is not a file is refused then.
    A ``file:`` reference without a digest gets the file's sha256 pinned (and said so).
    """
    from harness.models.refs import check_reference, kind_of
    from harness.provenance import sha256_file

    kind, target = kind_of(model)
    pinned = ""
    if kind == "file":
        check_reference(model)
        digest = sha256_file(Path(target).expanduser())
        ref = ModelRef(name=model, sha256=digest)
        pinned = f"; pinned the file's sha256 {digest[:12]}"
        checkpoint = Checkpoint(pretrain=base.retrain.model_copy(update={"epochs": 0}))
        source = "its own weights are the base"
    else:
        ref = _model_ref(model)
        check_reference(ref.name)
        if base.checkpoint.path is not None:
            raise HarnessError(
                f"{base.dataset.name}'s default track {base.id} starts from a published {base.model.name} "
                f"checkpoint, which {model} cannot load; write a track file with {model}'s own checkpoint "
                f"(checkpoint: {{path, sha256}}) and pass --track FILE")
        checkpoint = base.checkpoint
        source = "trained once with the track's pretrain recipe"
    derived = base.model_copy(update={
        "id": f"{base.dataset.name}-{ref.slug()}"[:64], "model": ref, "checkpoint": checkpoint,
        "description": f"{base.id} with the model replaced by {model} (derived)"})
    derived = TrackConfig.model_validate(derived.model_dump(by_alias=True))  # validated like a track file
    note = (f"no registered track for {model} on {base.dataset.name}: derived track {derived.id} from {base.id} "
            f"with the model replaced ({source}{pinned}); track hash {derived.hash()[:12]}")
    return derived, note


def _model_ref(model: str) -> ModelRef:
    try:
        return ModelRef(name=model)
    except ValidationError as e:
        raise HarnessError(f"model {model!r}: {explain(e)} (a registered name, torchvision:<name>, timm:<name>, "
                           f"<module>:<factory> or file:<path>)") from None


def resolve_track(track: Optional[str], model: Optional[str], dataset: Optional[str]
                  ) -> tuple[TrackConfig, Optional[str]]:
    """The track a user means, and a one-line note when it was derived (None otherwise).

    ``track`` (an id or a file) wins; with a different ``model`` it is derived from that track with the
    model replaced. Without ``track``: the registered track of (``model``, ``dataset``), else one derived
    from the dataset's default track (:func:`default_track`, :func:`derive_track`). A ``dataset`` that
    contradicts ``track`` is bad input.
    """
    if track:
        cfg = load_track(track)
        if dataset and dataset != cfg.dataset.name:
            raise HarnessError(f"track {cfg.id} is on {cfg.dataset.name}, not {dataset}; drop --dataset or pick "
                               f"another track")
        if model and model != cfg.model.name:
            return derive_track(cfg, model)
        return cfg, None
    if not model or not dataset:
        raise HarnessError("give --track, or both --model and --dataset")
    matches = [t for t in tracks_of(dataset) if t.model.name == model]
    if matches:
        return matches[0], None
    return derive_track(default_track(dataset), model)


def inapplicable(track: TrackConfig, sources: list, data_root: Optional[Path] = None) -> dict[str, str]:
    """``{method id: one-line reason}`` for the methods (``MethodSource``) whose manifest ``requires``
    what the track's architecture does not offer (:func:`harness.protocol.grouping.check_applicable`),
    checked on a freshly initialized model: no base checkpoint is needed or trained."""
    needy = [s for s in sources if s.manifest.requires]
    if not needy:
        return {}
    import torch

    from harness.protocol.grouping import NotApplicable, check_applicable, describe_groups
    from harness.tasks import task_for

    task = task_for(track, data_root=data_root)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = task.architecture().eval()
        example = task.example_inputs().cpu()
    groups = describe_groups(model, example, task.prune_config(model))
    out = {}
    for source in needy:
        try:
            check_applicable(source.manifest, model, example, groups)
        except NotApplicable as e:
            out[source.id] = str(e)
    return out


def tracks_of_model(model: str) -> list[TrackConfig]:
    """The registered tracks of a model (``--model`` alone selects its track when it has one)."""
    from harness.models.refs import check_reference
    reg = registry()
    found = [t for t in (reg.get(n) for n in reg.names()) if t.model.name == model]
    if not found:
        check_reference(model)  # an unknown model name: suggest close ones
        raise HarnessError(f"model {model!r} has no registered track: give --dataset (a track is derived from the "
                           f"dataset's default one) or --track FILE")
    return found
