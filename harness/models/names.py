"""The model registries (a leaf: builders and references import it, never the reverse, as in timm)."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from harness.registry import Registry

# factory(num_classes, in_chans, image_size, **kwargs) -> nn.Module
ModelFactory = Callable[..., nn.Module]

MODELS: Registry[ModelFactory] = Registry("model", of=Callable)

#: One CLI name, several architectures: ``"<name>/<variant>"`` -> factory. ``resnet18`` is the
#: CIFAR-style network (3x3 stem, no max-pool) used for CIFAR and digits; ``resnet18/imagenet`` is
#: torchvision's. A track picks one with ``model: {name: resnet18, kwargs: {variant: imagenet}}``,
#: so the architecture is part of the hashed track, never guessed from the data. The entry in
#: :data:`MODELS` is the default variant (``variant: cifar`` names it explicitly).
VARIANTS: Registry[ModelFactory] = Registry("model variant", of=Callable)
DEFAULT_VARIANT = "cifar"

#: Per-architecture pruning adapters, keyed by the model's class (``"module.QualName"``), as lazy
#: ``"module:attr"`` of ``adapter(model) -> PruneConfig``: what must never be pruned (a detection
#: head), attention heads, bare parameters, and the fix-up Torch-Pruning cannot do. Keyed by class,
#: not by registry name, so a model reloaded from a whole-model file gets the same adapter.
PRUNE_ADAPTERS: Registry[Callable[[nn.Module], object]] = Registry("prune adapter", of=Callable)
