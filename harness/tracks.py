"""Track registry: every ``harness/tracks/*.yaml`` is a validated :class:`TrackConfig`.

``--track`` also accepts a path to a YAML or JSON file. :func:`resolve_track` turns what a user names
(a track, or a model and a dataset) into one track: a registered one, or one *derived* from the
dataset's default track with the model replaced (any model reference, see
:mod:`harness.models.refs`), whose own hash then goes into every result. :func:`inapplicable` says
which methods cannot score a track's architecture meaningfully (their manifest's ``requires``).
"""

from __future__ import annotations

import functools
import re
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
    reg: Registry[TrackConfig] = Registry("track", of=TrackConfig)
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

    DATASETS.check(dataset)  # unknown dataset: the registry's one-line error with close names
    tracks = tracks_of(dataset)
    if not tracks:
        raise HarnessError(f"dataset {dataset!r} has no registered track to derive one from; pass --track FILE")
    return tracks[0]


def derive_track(base: TrackConfig, model: str, data_root: Optional[Path] = None,
                 kwargs: Optional[dict] = None) -> tuple[TrackConfig, str]:
    """``base`` with its model replaced by the reference ``model``, and the one-line note saying so.

    The derived track keeps everything else of ``base`` (data, strategy, speedups, budgets, recipes,
    seeds) and has its own id ``<dataset>-<model slug>`` and hash; ``kwargs`` go to the model's factory. Its base checkpoint: ``base``'s
    pretraining recipe (the new architecture is trained once and cached, as any track's); for a
    ``file:`` model, the file's own weights (``pretrain`` with 0 epochs); a published checkpoint
    file of ``base`` belongs to ``base``'s architecture, so a model that is not a file is refused then.
    A ``file:`` reference without a digest gets the file's sha256 pinned (and said so). ``base``'s own pin
    of its trained checkpoint is never inherited: the derived base is trained once, cached and reused, and
    its digest goes into every record (``pretrain`` prints the line that pins it). The input size is one
    the model accepts (:func:`fit_input_size`), said in the note.
    """
    from harness.models.refs import check_reference, kind_of
    from harness.files import sha256_file

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
        ref = _model_ref(model, kwargs)
        check_reference(ref.name)
        if base.checkpoint.path is not None:
            raise HarnessError(
                f"{base.dataset.name}'s default track {base.id} starts from a published {base.model.name} "
                f"checkpoint, which {model} cannot load; write a track file with {model}'s own checkpoint "
                f"(checkpoint: {{path, sha256}}) and pass --track FILE")
        # base's pin (checkpoint.sha256) is the digest of base's architecture: never inherited
        checkpoint = base.checkpoint.model_copy(update={"sha256": None})
        source = "trained once with the track's pretrain recipe, then reused"
    derived = base.model_copy(update={
        "id": f"{base.dataset.name}-{ref.slug()}"[:64], "model": ref, "checkpoint": checkpoint,
        "description": f"{base.id} with the model replaced by {model} (derived)"})
    derived = TrackConfig.model_validate(derived.model_dump(by_alias=True))  # validated like a track file
    derived, size = fit_input_size(derived, data_root)
    note = (f"no registered track for {model} on {base.dataset.name}: derived track {derived.id} from {base.id} "
            f"with the model replaced ({source}{pinned}); {size}; track hash {derived.hash()[:12]}")
    return derived, note


#: input sides a derived track tries, beyond the dataset's own and the model's declared minimum
PROBE_SIZES = (16, 32, 64, 96, 128, 160, 224)


def fit_input_size(track: TrackConfig, data_root: Optional[Path] = None,
                   probe: bool = True) -> tuple[TrackConfig, str]:
    """``track`` at an input size its model accepts, and a few words saying which.

    Candidates, smallest (cheapest on a CPU) first: the track's ``dataset.image_size`` (the dataset's own
    size when unset), the model's declared minimum (timm's ``min_input_size``), then :data:`PROBE_SIZES`
    above it; only the first without ``probe`` (a track file's size is the user's to choose). A size is
    accepted when a freshly built model runs forward there (in training and eval mode), Torch-Pruning builds its dependency graph, and its groups pass :func:`check_groups` (a dry
    prune to the floor). No size: :class:`HarnessError` in one line naming ``dataset.image_size``; an
    architecture that traces but cannot be pruned: :class:`~harness.protocol.grouping.Unprunable`, before
    any training. A dataset that cannot be loaded here leaves the track as it is (each run checks it).
    """
    from harness.data import DatasetError
    from harness.models.refs import check_kwargs, check_reference
    from harness.protocol.grouping import Unprunable, Untraceable
    from harness.tasks import task_for

    try:
        data = task_for(track, data_root=data_root).data
    except (DatasetError, HarnessError) as e:
        return track, f"input size not checked (dataset not loaded here: {e})"
    except (MemoryError, RuntimeError) as e:  # (review) e.g. dataset.image_size 4096: 96 GB of digits
        raise HarnessError(f"cannot load {track.dataset.name} at dataset.image_size {track.dataset.image_size} "
                           f"({_short(e)}); choose a smaller dataset.image_size") from None
    if getattr(data, "task", "classification") != "classification":
        return track, "input size as the track's"
    # what is wrong with the reference itself (a file's digest, kwargs the harness sets) is not about any size
    check_reference(track.model.name, track.model.sha256)
    check_kwargs(track.model.name, track.model.kwargs)
    native = data.image_size
    fixed = track.dataset.image_size is not None
    declared = _declared_min_size(track)
    sizes = [native] + sorted({s for s in (declared, *PROBE_SIZES) if s and s > native}) if probe and not fixed \
        else [native]
    failures: list[str] = []
    architecture: Optional[HarnessError] = None  # ran forward, but cannot be traced or pruned
    previous = None  # the last size's error, in one line
    for size in sizes:
        candidate = track if size == native else track.model_copy(update={
            "dataset": track.dataset.model_copy(update={"image_size": size})})
        try:
            _probe(candidate, data_root, data, size)
        except Exception as e:  # (review) whatever the model's own code raises: a refusal, never a traceback
            if isinstance(e, NotTheSize):
                raise e from None
            unprunable = isinstance(e, (Untraceable, Unprunable))
            if unprunable:
                architecture = architecture or e
            text = _short(e, limit=10_000)
            # the same at two sizes: the size is not the cause (the unpruned model ran forward for an architecture
            # error, so its size words are about channels)
            if text == previous and (unprunable or not about_size(text)):
                if unprunable:
                    raise e from None
                raise HarnessError(f"{track.model.name} fails the same way at {failures[-1].split(':')[0]} and "
                                   f"{size}px, so not for its input size: "
                                   f"{str(e) if type(e) is HarnessError else _short(e, 400)}") from None
            previous = text
            failures.append(f"{size}px: {_short(e)}")
            continue
        candidate = TrackConfig.model_validate(candidate.model_dump(by_alias=True))
        if size == native:
            return candidate, f"input size {size}px ({'the track' if fixed else 'the dataset'}'s own)"
        why = "the model's declared minimum" if size == declared else "the smallest probed size that works"
        return candidate, (f"input size {size}px ({why}; {native}px failed: {failures[0].split(': ', 1)[1]}); "
                           f"set dataset.image_size in a track file to choose another")
    if architecture is not None:  # the model runs; the harness cannot prune it: the layer, not the size
        raise architecture
    if fixed or not probe:
        which = "the track's dataset.image_size" if fixed else "the dataset's own size (the track sets no " \
                                                               "dataset.image_size)"
        raise HarnessError(f"{track.model.name} does not run on {track.dataset.name} at {which} ({failures[-1]}); "
                           f"set dataset.image_size to a size the model accepts, or fix the model if the size is "
                           f"not the cause")
    tried = ", ".join(f"{s}px" for s in sizes)
    raise HarnessError(f"{track.model.name} does not run on {track.dataset.name} at {tried} ({failures[-1]}); "
                       f"set dataset.image_size in a track file (--track FILE) to a size the model accepts")


#: what PyTorch, timm and transformers say when an input is too small or of a shape the model was not built for
_SIZE_WORDS = re.compile(
    r"too small|output size|input size|image size|img_size|kernel size|padd|divisible|does ?n[o']t match|spatial|"
    r"resolution|shapes cannot be multiplied|size of tensor a|is invalid for input of size|"
    r"more than 1 value per channel|non-?positive|negative dimension", re.IGNORECASE)


def about_size(error: str) -> bool:
    """Whether an error (one line) reads like one about the input's size: a probe keeps trying other sizes
    after it. Any other error that repeats at two sizes is the model's own, and reported as such."""
    return bool(_SIZE_WORDS.search(error))


def _short(e: Exception, limit: int = 160) -> str:
    from specs.base import one_line
    text = one_line(e)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _declared_min_size(track: TrackConfig) -> Optional[int]:
    """The smallest input side the model's library declares for it (timm's ``min_input_size``), if any."""
    from harness.models.refs import kind_of

    kind, target = kind_of(track.model.name)
    if kind != "timm":
        return None
    try:
        import timm
        cfg = timm.models.get_pretrained_cfg(target)
        size = getattr(cfg, "min_input_size", None) if cfg is not None else None
    except Exception:  # noqa: BLE001 - a declaration is optional
        return None
    return int(size[-1]) if size else None


class NotTheSize(HarnessError):
    """A refusal the input size has nothing to do with: the probe stops at the first size that raises it."""


class CannotSave(NotTheSize):
    """A run saves its pruned and retrained models whole (``torch.save`` pickles them): a model holding a lambda
    or a local function (an attribute, a hook) cannot be, whatever its input size."""


class WillNotLearn(NotTheSize):
    """The track's pretraining cannot give this model a base that beats chance, for a reason known before
    training (e.g. BatchNorm statistics that the recipe is too short to move)."""


def check_batchnorm_momentum(track: TrackConfig, model, train_samples: int) -> None:
    """:class:`WillNotLearn` in one line when a BatchNorm layer's momentum is so small that after the track's
    pretraining steps its running statistics would still hold more than half of their initial values (zero
    mean, unit variance): the trained base would then be evaluated with statistics of no data, at chance
    (torchvision's MNASNet: momentum 0.0003, which needs ~2,300 steps). Nothing to check for a base that is
    not trained here (a published checkpoint, or a ``file:`` model's own weights)."""
    import math

    from torch import nn

    recipe = track.checkpoint.pretrain
    if track.checkpoint.path is not None or recipe is None or recipe.epochs == 0:
        return
    steps = recipe.epochs * max(1, train_samples // recipe.batch_size)
    for name, m in model.named_modules():
        momentum = getattr(m, "momentum", None) if isinstance(m, nn.modules.batchnorm._BatchNorm) else None
        if momentum is None or not getattr(m, "track_running_stats", False):
            continue
        kept = (1 - momentum) ** steps
        if kept > 0.5:
            need = math.ceil(math.log(0.5) / math.log(1 - momentum))
            epochs = math.ceil(need / max(1, train_samples // recipe.batch_size))
            raise WillNotLearn(
                f"{track.model.name}'s BatchNorm layer {name!r} has momentum {momentum:.2g}: after the pretrain "
                f"recipe's {steps} steps its running statistics would still weigh their initial values (mean 0, "
                f"variance 1) at {kept:.0%}, so the trained base would be evaluated with statistics of no data "
                f"(at chance); pretrain for at least {need} steps (checkpoint.pretrain.epochs: {epochs} in a track "
                f"file), or build the model with a larger BatchNorm momentum (a <module>:<factory> reference)")


def _probe(track: TrackConfig, data_root: Optional[Path], data, size: int) -> None:
    """Build ``track``'s model (seeded) and check it at ``size``: forward in training and eval mode, the
    dependency graph, and the groups (:func:`~harness.protocol.grouping.check_groups`)."""
    import torch

    from harness.models import build_model, logits_of
    from harness.protocol.grouping import build_graph, check_groups, describe_groups
    from harness.tasks import task_for

    task = task_for(track, data_root=data_root)  # its data is not loaded: the model is built for ``data``'s shape
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        try:
            model = build_model(track.model, num_classes=data.num_classes, in_chans=data.in_chans, image_size=size)
            check_batchnorm_momentum(track, model, len(data.train))
            _check_saveable(track, model)
            x = torch.randn(2, data.in_chans, size, size)
            model.train()
            logits = logits_of(model(x))  # (with gradients: training needs them)
        except SystemExit as e:  # (review) a factory or forward that exits: no silent exit 0
            raise HarnessError(f"{track.model.name}: the model's code called sys.exit({e.code})") from None
        if tuple(logits.shape) != (2, data.num_classes):
            raise HarnessError(f"logits of shape {list(logits.shape)}, not [batch, {data.num_classes}]")
        if not logits.is_floating_point() or not logits.requires_grad:  # (review) it would never learn
            why = f"of dtype {logits.dtype}" if not logits.is_floating_point() else "detached from the parameters"
            raise HarnessError(f"{track.model.name}'s logits in training mode are {why}: pretraining cannot move "
                               f"them; return the classifier's float output")
        model.eval()
        example = x[:1]
        config = task.prune_config(model)
        graph = build_graph(model, example, config)
        groups = describe_groups(model, example, config, graph)
        check_groups(model, example, config, groups, track.pruning.min_channel_fraction)


def _check_saveable(track: TrackConfig, model) -> None:
    """:class:`CannotSave` in one line when ``torch.save`` cannot pickle ``model`` (tried on a weightless copy)."""
    import io

    import torch

    from harness.protocol.grouping import meta_copy
    try:
        torch.save(meta_copy(model), io.BytesIO())
    except Exception as e:  # noqa: BLE001 - pickling fails in many ways (PicklingError, AttributeError, TypeError)
        raise CannotSave(f"{track.model.name} cannot be saved: a run saves its pruned model whole and torch.save "
                         f"cannot pickle it ({_short(e)}); define its classes and functions at module level, not as "
                         f"lambdas or local ones") from None


def _model_ref(model: str, kwargs: Optional[dict] = None) -> ModelRef:
    try:
        return ModelRef(name=model, kwargs=kwargs or {})
    except ValidationError as e:
        raise HarnessError(f"model {model!r}: {explain(e)} (a registered name, torchvision:<name>, timm:<name>, "
                           f"hf:<model_type>, <module>:<factory> or file:<path>)") from None


def resolve_track(track: Optional[str], model: Optional[str], dataset: Optional[str],
                  data_root: Optional[Path] = None) -> tuple[TrackConfig, Optional[str]]:
    """The track a user means, and a one-line note when it was derived (None otherwise).

    ``track`` (an id or a file) wins; with a different ``model`` it is derived from that track with the
    model replaced. A track file's model gets the checks a derived track's gets, before any training, at the
    track's own input size (:func:`fit_input_size` without probing other sizes): the same one-line refusals.
    Without ``track``: the registered track of (``model``, ``dataset``), else one derived
    from the dataset's default track (:func:`default_track`, :func:`derive_track`). A ``dataset`` that
    contradicts ``track`` is bad input.
    """
    if track:
        cfg = load_track(track)
        if dataset and dataset != cfg.dataset.name:
            raise HarnessError(f"track {cfg.id} is on {cfg.dataset.name}, not {dataset}; drop --dataset or pick "
                               f"another track")
        if model and model != cfg.model.name:
            return derive_track(cfg, model, data_root)
        if track not in registry().names():  # a track file: its model is the user's, checked before any training
            check_track_file(cfg, data_root)
        return cfg, None
    if not model or not dataset:
        raise HarnessError("give --track, or both --model and --dataset")
    matches = [t for t in tracks_of(dataset) if t.model.name == model]
    if matches:
        return matches[0], None
    return derive_track(default_track(dataset), model, data_root)


#: (track hash, data root) of the track files whose model passed :func:`check_track_file` in this process
_FILES_CHECKED: set[tuple[str, str]] = set()


def check_track_file(track: TrackConfig, data_root: Optional[Path] = None) -> None:
    """A track file's model checked as a derived track's is, at the track's own input size: forward in both
    modes, the dependency graph, the groups (a dry prune to the floor) and the BatchNorm momentum against the
    pretrain recipe - a one-line refusal before any training instead of after pretraining. Once per track and
    process (the check of a seeded, freshly built model gives the same answer every time)."""
    key = (track.hash(), str(data_root))
    if key not in _FILES_CHECKED:
        fit_input_size(track, data_root, probe=False)
        _FILES_CHECKED.add(key)


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
