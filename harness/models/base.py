"""The model contract: a registry of factories plus the one layer pruning never touches."""

from __future__ import annotations

from typing import Callable

from torch import nn

from harness.registry import Registry, resolve

__all__ = ["MODELS", "ModelFactory", "classifier_of", "create_model", "scaled"]

# factory(num_classes, in_chans, image_size, **kwargs) -> nn.Module
ModelFactory = Callable[..., nn.Module]

MODELS: Registry[ModelFactory | str] = Registry("model")

# Attribute names under which model families keep their classification layer.
CLASSIFIER_ATTRS = ("fc", "classifier", "head")


def create_model(name: str, num_classes: int, in_chans: int = 3, image_size: int = 32, **kwargs) -> nn.Module:
    """Build a registered model. Raises ``UnknownName`` for names not in :data:`MODELS`."""
    factory = resolve(MODELS.get(name))
    return factory(num_classes=num_classes, in_chans=in_chans, image_size=image_size, **kwargs)


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
