"""The model contract: a registry of factories, per-dataset-family variants, per-architecture
pruning adapters, and the one layer pruning never touches."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Optional

import torch
from torch import nn

from harness.errors import HarnessError
from harness.models.names import DEFAULT_VARIANT, MODELS, PRUNE_ADAPTERS, VARIANTS, ModelFactory
from harness.models.refs import check_kwargs

if TYPE_CHECKING:
    from harness.protocol.grouping import PruneConfig
    from specs.track import ModelRef

__all__ = ["MODELS", "PRUNE_ADAPTERS", "VARIANTS", "ModelFactory", "build_model", "create_model",
           "logits_of", "prune_config_of", "scaled", "variants_of"]

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
    MODELS.check(name)
    check_kwargs(name, kwargs)
    factory = MODELS.get(name) if variant is None or variant == DEFAULT_VARIANT else VARIANTS.get(f"{name}/{variant}")
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
            return PRUNE_ADAPTERS.get(key)(model)
    return PruneConfig()


def build_model(ref: "ModelRef", num_classes: int, in_chans: int, image_size: int) -> nn.Module:
    """The model a track's ``model`` names, for data of ``num_classes`` / ``in_chans`` / ``image_size``."""
    return create_model(ref.name, num_classes=num_classes, in_chans=in_chans, image_size=image_size,
                        sha256=ref.sha256, **ref.kwargs)


def logits_of(out) -> torch.Tensor:
    """The logits in what a classifier's forward returns - the one adapter every stage uses (pretraining,
    calibration, observations, retraining, evaluation): a tensor as it is; a ``transformers`` output or a
    dict: its ``logits`` (a dict without them is refused in one line naming its keys: which value is the
    logits would be a guess); a tuple or namedtuple (GoogLeNet's and Inception's training outputs: main
    logits first, auxiliary ones after): its first element."""
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, Mapping):
        if out.get("logits") is None:
            keys = ", ".join(repr(k) for k in list(out)[:8]) + (", ..." if len(out) > 8 else "")
            raise HarnessError(f"the model returned a {type(out).__name__} with keys [{keys}] and no 'logits': "
                               f"return the logits tensor (batch x classes), or put it under 'logits'")
        return logits_of(out["logits"])
    if isinstance(out, (tuple, list)) and out:
        return logits_of(out[0])
    raise HarnessError(f"the model returned a {type(out).__name__}, which holds no logits: return a tensor "
                       f"[batch, classes], a tuple with the logits first, or a dict with 'logits'")


def scaled(channels: int, width: float) -> int:
    """Channel count under a width multiplier: rounded, at least 1."""
    if width <= 0:
        raise ValueError(f"width must be > 0, got {width}")
    return max(1, int(round(channels * width)))
