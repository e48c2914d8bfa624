"""The model contract: a registry of factories, per-dataset-family variants, per-architecture
pruning adapters, and the one layer pruning never touches."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Callable, Optional

import torch
from torch import nn

from harness.errors import HarnessError
from harness.registry import Registry, resolve

if TYPE_CHECKING:
    from harness.protocol.grouping import PruneConfig
    from specs.track import ModelRef

__all__ = ["MODELS", "PRUNE_ADAPTERS", "VARIANTS", "ModelFactory", "build_model", "classifier_of", "create_model",
           "logits_of", "prune_config_of", "scaled", "variants_of"]

# factory(num_classes, in_chans, image_size, **kwargs) -> nn.Module
ModelFactory = Callable[..., nn.Module]

MODELS: Registry[ModelFactory | str] = Registry("model")

#: One CLI name, several architectures: ``"<name>/<variant>"`` -> factory. ``resnet18`` is the
#: CIFAR-style network (3x3 stem, no max-pool) used for CIFAR and digits; ``resnet18/imagenet`` is
#: torchvision's. A track picks one with ``model: {name: resnet18, kwargs: {variant: imagenet}}``,
#: so the architecture is part of the hashed track, never guessed from the data. The entry in
#: :data:`MODELS` is the default variant (``variant: cifar`` names it explicitly).
VARIANTS: Registry[ModelFactory | str] = Registry("model variant")
DEFAULT_VARIANT = "cifar"

#: Per-architecture pruning adapters, keyed by the model's class (``"module.QualName"``), as lazy
#: ``"module:attr"`` of ``adapter(model) -> PruneConfig``: what must never be pruned (a detection
#: head), attention heads, bare parameters, and the fix-up Torch-Pruning cannot do. Keyed by class,
#: not by registry name, so a model reloaded from a whole-model file gets the same adapter.
PRUNE_ADAPTERS: Registry[str] = Registry("prune adapter")

# Attribute names under which model families keep their classification layer.
CLASSIFIER_ATTRS = ("fc", "classifier", "head")


def create_model(name: str, num_classes: int, in_chans: int = 3, image_size: int = 32,
                 variant: Optional[str] = None, sha256: Optional[str] = None, **kwargs) -> nn.Module:
    """Build a model from a name a track may give (:mod:`harness.models.refs`): a registered name, where
    ``variant`` selects a :data:`VARIANTS` entry (e.g. ``"imagenet"``), or a reference
    (``torchvision:``, ``timm:``, ``<module>:<factory>``, ``file:`` with ``sha256``).

    Raises ``UnknownName`` for names not in :data:`MODELS` and variants not in :data:`VARIANTS`, and
    HarnessError (one line) for a bad reference.
    """
    if ":" in name:
        from harness.models.refs import build_reference

        if variant is not None:
            kwargs["variant"] = variant  # only registered names have variants: the factory decides
        return build_reference(name, num_classes, in_chans, image_size, sha256=sha256, **kwargs)
    entry = MODELS.get(name)
    if variant is not None and variant != DEFAULT_VARIANT:
        entry = VARIANTS.get(f"{name}/{variant}")
    factory = resolve(entry)
    return factory(num_classes=num_classes, in_chans=in_chans, image_size=image_size, **kwargs)


def variants_of(name: str) -> list[str]:
    """The non-default variants registered for ``name`` (e.g. ``["imagenet"]`` for ``resnet18``)."""
    return [v.split("/", 1)[1] for v in VARIANTS.names() if v.split("/", 1)[0] == name]


def prune_config_of(model: nn.Module) -> "PruneConfig":
    """The architecture's own prune config: the adapter registered for its class or the nearest base
    class (an empty config when there is none)."""
    from harness.protocol.grouping import PruneConfig  # torch_pruning is imported only when pruning

    for cls in type(model).__mro__:  # a subclass (timm's distilled DeiT) gets its base class's adapter
        key = f"{cls.__module__}.{cls.__qualname__}"
        if key in PRUNE_ADAPTERS:
            return resolve(PRUNE_ADAPTERS.get(key))(model)
    return PruneConfig()


def build_model(ref: "ModelRef", num_classes: int, in_chans: int, image_size: int) -> nn.Module:
    """The model a track's ``model`` names, for data of ``num_classes`` / ``in_chans`` / ``image_size``."""
    return create_model(ref.name, num_classes=num_classes, in_chans=in_chans, image_size=image_size,
                        sha256=ref.sha256, **ref.kwargs)


def logits_of(out) -> torch.Tensor:
    """The logits in what a classifier's forward returns - the one adapter every stage uses (pretraining,
    calibration, observations, retraining, evaluation): a tensor as it is; a ``transformers`` output or a
    dict: its ``logits`` (else its first value); a tuple or namedtuple (GoogLeNet's and Inception's
    training outputs: main logits first, auxiliary ones after): its first element."""
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, Mapping) and out:
        return logits_of(out["logits"] if "logits" in out else next(iter(out.values())))
    if isinstance(out, (tuple, list)) and out:
        return logits_of(out[0])
    raise HarnessError(f"the model returned a {type(out).__name__}, which holds no logits: return a tensor "
                       f"[batch, classes], a tuple with the logits first, or a dict with 'logits'")


class NoClassifier(HarnessError, ValueError):
    """The model has no layer the harness recognizes as its classifier."""


def classifier_of(model: nn.Module) -> nn.Module:
    """The final classification layer, which the harness never prunes.

    Looked up as ``model.get_classifier()`` (timm; the first of several heads, e.g. a distilled DeiT's),
    then the attributes ``fc``, ``classifier``, ``head`` (the last ``nn.Linear`` inside one if it is a
    container, else its last conv: SqueezeNet's classifier is a 1x1 conv), then the last ``nn.Linear``
    in the model. Raises :class:`NoClassifier` when there is none.
    """
    getter = getattr(model, "get_classifier", None)
    if callable(getter):
        layer = getter()
        if isinstance(layer, (tuple, list)) and layer:
            layer = layer[0]
        if isinstance(layer, nn.Module) and not isinstance(layer, nn.Identity):
            return layer
    for attr in CLASSIFIER_ATTRS:
        layer = getattr(model, attr, None)
        if isinstance(layer, nn.Linear):
            return layer
        if isinstance(layer, nn.Module):
            linears = [m for m in layer.modules() if isinstance(m, nn.Linear)]
            convs = [m for m in layer.modules() if isinstance(m, nn.modules.conv._ConvNd)]
            if linears or convs:
                return (linears or convs)[-1]
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise NoClassifier(
            f"cannot find the classifier of {type(model).__name__}: no attribute "
            f"{' / '.join(CLASSIFIER_ATTRS)} and no nn.Linear (keep the classification layer in one of those "
            f"attributes, or give the model get_classifier())"
        )
    return linears[-1]


#: names of per-channel layer-scale parameters (timm ``LayerScale.gamma``, ``ConvNeXtBlock.gamma``;
#: torchvision ``CNBlock.layer_scale``; transformers ``ConvNextLayer.layer_scale_parameter``)
LAYER_SCALE_NAMES = ("gamma", "layer_scale", "layer_scale_parameter")


def layer_scales(model: nn.Module) -> list[tuple[nn.Parameter, int]]:
    """``[(parameter, 0)]``: every layer-scale parameter of ``model`` (shape ``[C]`` or ``[C, 1, 1]``,
    owned by a module that is not a layer Torch-Pruning knows), pruned along its channels (dim 0). For a
    prune adapter's ``unwrapped_parameters``: declared, Torch-Pruning neither guesses nor warns."""
    layers = (nn.modules.conv._ConvNd, nn.Linear, nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm)
    out = []
    for module in model.modules():
        if isinstance(module, layers):
            continue
        for name, p in module.named_parameters(recurse=False):
            if name in LAYER_SCALE_NAMES and p.dim() >= 1 and all(s == 1 for s in p.shape[1:]):
                out.append((p, 0))
    return out


def scaled(channels: int, width: float) -> int:
    """Channel count under a width multiplier: rounded, at least 1."""
    if width <= 0:
        raise ValueError(f"width must be > 0, got {width}")
    return max(1, int(round(channels * width)))
