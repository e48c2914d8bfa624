"""Model references: what a track's ``model.name`` may name, and how each kind is built.

=========================  ============================================================================
``resnet18``               a registered factory (:data:`harness.models.MODELS`)
``torchvision:<name>``     ``torchvision.models.get_model(name, weights=None, num_classes=...)``: any of
                           torchvision's classification architectures
``timm:<name>``            ``timm.create_model(name, pretrained=False, num_classes=..., in_chans=...)``
``hf:<model_type>``        ``transformers``: ``AutoModelForImageClassification.from_config(
                           AutoConfig.for_model(model_type, **kwargs))`` with ``num_labels``,
                           ``num_channels``, ``image_size`` set from the data (``vit``, ``swin``, ...)
``<module>:<factory>``     a function on ``PYTHONPATH`` called as ``factory(num_classes=, in_chans=,
                           image_size=, **kwargs)`` that returns an ``nn.Module``
``file:<path>``            a whole pickled ``nn.Module`` (``torch.save(model, path)``), checked against
                           ``model.sha256`` and unpickled with ``torch.load(weights_only=False)``
=========================  ============================================================================

Nothing is ever downloaded: torchvision and timm build untrained architectures, and ``kwargs`` that
would load weights (``weights``, ``pretrained``, ...) are refused; the track's base checkpoint holds
the weights. ``image_size`` reaches the architectures that need it (ViTs: ``img_size`` /
``image_size``); a torchvision model on non-RGB data gets its first convolution rebuilt for
``in_chans`` inputs.

**A model file is code.** Unpickling runs whatever the file says, with the harness's rights; only
name files you trust. The digest pins which file a result came from; it does not make a file safe.

Every bad reference is a one-line :class:`~harness.errors.HarnessError`: an unknown name (with close
matches), a module that does not import, a factory that raises or returns something else than a
module, a missing file, a file whose digest differs.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import os
from pathlib import Path
from typing import Callable, Optional

from torch import nn

from harness.errors import HarnessError
from specs.base import one_line

#: keyword arguments that would make a factory load (download) weights
WEIGHT_KWARGS = ("weights", "pretrained", "weights_backbone", "pretrained_cfg", "pretrained_cfg_overlay",
                 "checkpoint_path")
KINDS_HINT = "torchvision:<name>, timm:<name>, hf:<model_type>, <module>:<factory> or file:<path>"


def kind_of(name: str) -> tuple[str, str]:
    """``(kind, target)``: kind is ``registered``, ``torchvision``, ``timm``, ``hf``, ``factory`` or ``file``."""
    head, sep, tail = name.partition(":")
    if not sep:
        return "registered", name
    if head in ("torchvision", "timm", "hf", "file"):
        return head, tail
    return "factory", name


def _close(kind: str, name: str, known: list[str]) -> str:
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
    hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    return f"unknown {kind} {name!r}{hint}"


#: what the harness itself passes each kind of builder, from the data (the classes, the channels, the input size)
HARNESS_KWARGS = {"registered": ("num_classes", "in_chans", "image_size"),
                  "factory": ("num_classes", "in_chans", "image_size"),
                  "torchvision": ("num_classes",), "timm": ("num_classes", "in_chans"), "hf": ("num_labels",),
                  "file": ()}


def check_kwargs(name: str, kwargs: dict) -> None:
    """A track's model ``kwargs`` neither load weights nor set what the harness passes the builder itself
    (one-line :class:`HarnessError`, before anything is built)."""
    bad = sorted(set(kwargs) & set(WEIGHT_KWARGS))
    if bad:
        raise HarnessError(f"model {name}: kwargs {bad[0]!r} would load pretrained weights; the harness never "
                           f"downloads - put the weights in the track's base checkpoint (checkpoint.path + sha256)")
    clash = sorted(set(kwargs) & set(HARNESS_KWARGS[kind_of(name)[0]]))
    if clash:
        raise HarnessError(f"model {name}: kwargs {clash[0]!r} is set by the harness from the dataset (its classes, "
                           f"channels and dataset.image_size); remove it from the model's kwargs")


def first_conv_for(model: nn.Module, in_chans: int) -> nn.Module:
    """Rebuild ``model``'s first 3-channel ``Conv2d`` for ``in_chans`` inputs (same geometry); in place."""
    if in_chans == 3:
        return model
    for name, conv in model.named_modules():
        if isinstance(conv, nn.Conv2d) and conv.in_channels == 3 and conv.groups == 1:
            parent, _, attr = name.rpartition(".")
            new = nn.Conv2d(in_chans, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                            conv.dilation, bias=conv.bias is not None, padding_mode=conv.padding_mode)
            setattr(model.get_submodule(parent), attr, new)
            return model
    raise HarnessError(f"{type(model).__name__}: no 3-channel input convolution to rebuild for {in_chans} channels")


#: torchvision classifiers with auxiliary heads, built without them unless ``aux_logits`` is given: the harness
#: trains on the main logits only (:func:`harness.models.logits_of`), so the heads would stay untrained, and
#: they run in training mode only - the dependency graph (traced in eval mode) would not see them, and a pruned
#: model would fail its next training step. Inception's also needs 299 px inputs, its main path 75 px.
AUX_HEADS = ("googlenet", "inception_v3")

Builder = Callable[[int, int, int, dict], nn.Module]  # (num_classes, in_chans, image_size, kwargs) -> model


def _torchvision(name: str) -> Builder:
    import torchvision

    known = torchvision.models.list_models(module=torchvision.models)  # classification architectures only
    if name not in known:
        raise HarnessError(f"{_close('torchvision model', name, known)} (torchvision {torchvision.__version__} "
                           f"classifiers: torchvision.models.list_models(module=torchvision.models))")
    cls = inspect.signature(torchvision.models.get_model_builder(name)).return_annotation
    takes_size = inspect.isclass(cls) and "image_size" in inspect.signature(cls.__init__).parameters

    def build(num_classes, in_chans, image_size, kwargs):
        extra = {"image_size": image_size} if takes_size and "image_size" not in kwargs else {}
        if name in AUX_HEADS and "aux_logits" not in kwargs:
            extra["aux_logits"] = False
        model = _call(f"torchvision:{name}", lambda: torchvision.models.get_model(
            name, weights=None, num_classes=num_classes, **extra, **kwargs))
        return first_conv_for(model, in_chans)
    return build


def _timm(name: str) -> Builder:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never wait on the Hub
    import timm

    if not timm.is_model(name):
        raise HarnessError(f"{_close('timm model', name, timm.list_models())} (timm {timm.__version__}: "
                           f"timm.list_models('pattern*') lists them)")

    def build(num_classes, in_chans, image_size, kwargs):
        args = dict(pretrained=False, num_classes=num_classes, in_chans=in_chans, **kwargs)
        if "img_size" not in kwargs:  # ViT-style models need it; the others do not take it
            try:
                return _call(f"timm:{name}", lambda: timm.create_model(name, img_size=image_size, **args))
            except HarnessError as e:
                if "img_size" not in str(e):
                    raise
        return _call(f"timm:{name}", lambda: timm.create_model(name, **args))
    return build


def _factory(name: str) -> Builder:
    module_name, _, attr = name.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise HarnessError(f"model {name}: cannot import module {module_name!r} ({one_line(e)}); is its folder "
                           f"on PYTHONPATH?") from None
    except Exception as e:  # the module itself raised while importing
        raise HarnessError(f"model {name}: importing {module_name!r} raised {one_line(e)}") from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        known = [n for n, v in vars(module).items() if callable(v) and not n.startswith("_")]
        raise HarnessError(f"model {name}: {_close(f'function in {module_name}', attr, known)}")
    return lambda num_classes, in_chans, image_size, kwargs: _call(name, lambda: factory(
        num_classes=num_classes, in_chans=in_chans, image_size=image_size, **kwargs))


def _hf(model_type: str) -> Builder:
    """``transformers``: ``AutoConfig.for_model(model_type, **kwargs)`` and
    ``AutoModelForImageClassification.from_config`` - a config, never a checkpoint, so nothing is downloaded.
    A type with several classifier classes (``deit``: with and without a teacher head; ``levit``; ``perceiver``:
    learned, Fourier or conv preprocessing) builds the first one transformers lists unless ``kwargs`` name
    ``architectures`` (transformers 5 picks the class by ``config.architectures``)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import transformers
        from transformers import AutoModelForImageClassification
        from transformers.models.auto.configuration_auto import CONFIG_MAPPING
        from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES
    except ImportError as e:
        raise HarnessError(f"model hf:{model_type} needs transformers ({one_line(e)}): pip install transformers") \
            from None
    known = sorted(t for t in MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES if t in CONFIG_MAPPING)
    if model_type not in known:
        raise HarnessError(f"{_close('transformers image classifier', model_type, known)} (transformers "
                           f"{transformers.__version__}: the model types of AutoModelForImageClassification)")

    def build(num_classes, in_chans, image_size, kwargs):
        from transformers import AutoConfig

        def make():
            config = AutoConfig.for_model(model_type, **kwargs)
            for attr, value in (("num_channels", in_chans), ("image_size", image_size)):
                if hasattr(config, attr) and attr not in kwargs:
                    setattr(config, attr, value)
            config.num_labels = num_classes
            classes = MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES[model_type]
            if not isinstance(classes, str) and not getattr(config, "architectures", None):
                config.architectures = [classes[0]]  # a type with several classifier classes: its first
            return AutoModelForImageClassification.from_config(config)
        model = _call(f"hf:{model_type}", make)
        first = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
        if first is not None and first.in_channels == 3 != in_chans:  # a class that ignores num_channels
            first_conv_for(model, in_chans)
        return model
    return build


def _file(path: str, sha256: Optional[str]) -> Builder:
    from harness.files import sha256_file

    file = Path(path).expanduser()
    if not file.is_file():
        raise HarnessError(f"model file not found: {file}")
    digest = sha256_file(file)
    if sha256 is not None and digest != sha256:
        raise HarnessError(f"{file}: sha256 {digest} does not match the track's {sha256}")

    def build(num_classes, in_chans, image_size, kwargs):
        import torch

        if kwargs:
            raise HarnessError(f"model file:{path}: a model file is already built; it takes no kwargs")
        if sha256_file(file) != digest:  # changed since it was checked
            raise HarnessError(f"{file}: changed while in use (sha256 is no longer {digest})")
        try:  # trusted code: unpickling runs the file (see the module docstring)
            model = torch.load(file, map_location="cpu", weights_only=False)
        except Exception as e:
            raise HarnessError(f"{file}: cannot unpickle a model ({one_line(e)}); the classes it was saved with "
                               f"must be importable here (PYTHONPATH)") from None
        if not isinstance(model, nn.Module):
            raise HarnessError(f"{file}: holds a {type(model).__name__}, not a whole nn.Module; save it with "
                               f"torch.save(model, path) (a state dict belongs in the track's checkpoint.path)")
        head = _classifier_width(model)
        if head is not None and head != num_classes:
            raise HarnessError(f"{file}: the model's classifier has {head} outputs, the dataset has {num_classes} "
                               f"classes")
        return model.float()
    return build


def _classifier_width(model: nn.Module) -> Optional[int]:
    from harness.models.heads import classifier_of

    try:
        layer = classifier_of(model)
    except ValueError:
        return None
    return getattr(layer, "out_features", None)


def _call(name: str, build: Callable[[], object]) -> nn.Module:
    try:
        model = build()
    except HarnessError:
        raise
    except Exception as e:
        raise HarnessError(f"model factory {name} raised {one_line(e)}") from None
    if not isinstance(model, nn.Module):
        raise HarnessError(f"model factory {name} returned a {type(model).__name__}, not an nn.Module")
    return model


def locate(name: str, sha256: Optional[str] = None) -> Builder:
    """The builder of a non-registered reference, after checking what can be checked without building:
    the torchvision/timm architecture, module and function, or file and digest exist. A factory that
    raises is found out when it runs (one line as well)."""
    kind, target = kind_of(name)
    if kind == "registered":
        raise ValueError(f"{name!r} is a registered name, not a reference")
    if kind == "file":
        return _file(target, sha256)
    return {"torchvision": _torchvision, "timm": _timm, "hf": _hf, "factory": _factory}[kind](target)


def build_reference(name: str, num_classes: int, in_chans: int = 3, image_size: int = 32,
                    sha256: Optional[str] = None, **kwargs) -> nn.Module:
    """Build a non-registered reference (see the module docstring); raises HarnessError in one line."""
    check_kwargs(name, kwargs)
    return locate(name, sha256)(num_classes, in_chans, image_size, kwargs)


def check_reference(name: str, sha256: Optional[str] = None) -> None:
    """Raise HarnessError (one line) unless ``name`` is a registered name or a reference that can be
    located (see :func:`locate`)."""
    from harness.models.names import MODELS

    if kind_of(name)[0] != "registered":
        locate(name, sha256)
    elif name not in MODELS:
        raise HarnessError(f"{_close('model', name, MODELS.names())} (registered: {', '.join(MODELS.names())}; "
                           f"or {KINDS_HINT})")
