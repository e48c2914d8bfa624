"""The model contract: a registry of factories, per-dataset-family variants, per-architecture
pruning adapters, and the one layer pruning never touches."""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Optional

from torch import nn

from harness.registry import Registry, resolve

if TYPE_CHECKING:
    from harness.protocol.grouping import PruneConfig

__all__ = ["MODELS", "PRUNE_ADAPTERS", "VARIANTS", "ModelFactory", "classifier_of", "create_model",
           "prune_config_of", "scaled", "variants_of"]

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
                 variant: Optional[str] = None, **kwargs) -> nn.Module:
    """Build a registered model; ``variant`` selects a :data:`VARIANTS` entry (e.g. ``"imagenet"``).

    Raises ``UnknownName`` for names not in :data:`MODELS` and variants not in :data:`VARIANTS`.
    """
    entry = MODELS.get(name)
    if variant is not None and variant != DEFAULT_VARIANT:
        entry = VARIANTS.get(f"{name}/{variant}")
    factory = resolve(entry)
    return factory(num_classes=num_classes, in_chans=in_chans, image_size=image_size, **kwargs)


def variants_of(name: str) -> list[str]:
    """The non-default variants registered for ``name`` (e.g. ``["imagenet"]`` for ``resnet18``)."""
    return [v.split("/", 1)[1] for v in VARIANTS.names() if v.split("/", 1)[0] == name]


def prune_config_of(model: nn.Module) -> "PruneConfig":
    """The architecture's own prune config (an empty one when no adapter is registered for its class)."""
    from harness.protocol.grouping import PruneConfig  # torch_pruning is imported only when pruning

    cls = type(model)
    key = f"{cls.__module__}.{cls.__qualname__}"
    if key in PRUNE_ADAPTERS:
        return resolve(PRUNE_ADAPTERS.get(key))(model)
    return PruneConfig()


def classifier_of(model: nn.Module) -> nn.Module:
    """The final classification layer, which the harness never prunes.

    Looked up as ``model.get_classifier()`` (timm), then the attributes ``fc``,
    ``classifier``, ``head`` (the last ``nn.Linear`` inside one if it is a
    container), then the last ``nn.Linear`` in the model.
    """
    getter = getattr(model, "get_classifier", None)
    if callable(getter):
        layer = getter()
        if isinstance(layer, nn.Module) and not isinstance(layer, nn.Identity):
            return layer
    for attr in CLASSIFIER_ATTRS:
        layer = getattr(model, attr, None)
        if isinstance(layer, nn.Linear):
            return layer
        if isinstance(layer, nn.Module):
            linears = [m for m in layer.modules() if isinstance(m, nn.Linear)]
            if linears:
                return linears[-1]
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError(
            f"cannot find the classifier of {type(model).__name__}: no attribute "
            f"{' / '.join(CLASSIFIER_ATTRS)} and no nn.Linear"
        )
    return linears[-1]


def scaled(channels: int, width: float) -> int:
    """Channel count under a width multiplier: rounded, at least 1."""
    if width <= 0:
        raise ValueError(f"width must be > 0, got {width}")
    return max(1, int(round(channels * width)))
