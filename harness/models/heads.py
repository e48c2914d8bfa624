"""Where a classifier keeps its classification layer (a leaf of :mod:`harness.models`)."""

from __future__ import annotations

from torch import nn

from harness.errors import HarnessError

# Attribute names under which model families keep their classification layer.
CLASSIFIER_ATTRS = ("fc", "classifier", "head")


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


#: names of per-channel layer-scale parameters (timm ``LayerScale.gamma`` - the ``ls1``/``ls2`` of its ViTs -,
#: ``ConvNeXtBlock.gamma``, CaiT's and EVA's ``gamma_1``/``gamma_2``; torchvision ``CNBlock.layer_scale``;
#: transformers ``ConvNextLayer.layer_scale_parameter``, ``lambda_1``/``lambda_2`` of BEiT-style layers)
LAYER_SCALE_NAMES = ("gamma", "gamma_1", "gamma_2", "layer_scale", "layer_scale_parameter", "lambda_1", "lambda_2")


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
