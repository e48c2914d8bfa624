"""torchvision's ImageNet architectures under the CLI names ``resnet18``, ``resnet50``, ``vgg19``.

Registered as the ``imagenet`` variants (``resnet18/imagenet`` ...; see
:data:`harness.models.base.VARIANTS`). Built with ``weights=None``: nothing is ever downloaded; a
track's base checkpoint is a local state dict (e.g. torchvision's ``resnet18-f37072fd.pth``).
At 1000 classes ``resnet18`` has 11,689,512 parameters and ``resnet50`` 25,557,032, exactly
torchvision's. ``vgg19`` is ``vgg19_bn`` (PruningBench's VGG-19 has BatchNorm).
"""

from __future__ import annotations

from torch import nn


def _stem(model: nn.Module, attr: str, in_chans: int) -> nn.Module:
    """Replace the first conv when the data is not RGB (same geometry, new input channels)."""
    if in_chans == 3:
        return model
    parent, _, name = attr.rpartition(".")
    owner = model.get_submodule(parent)
    old = getattr(owner, name)  # also works for nn.Sequential's "0"
    setattr(owner, name, nn.Conv2d(in_chans, old.out_channels, old.kernel_size, old.stride, old.padding,
                                   bias=old.bias is not None))
    return model


def resnet18(num_classes: int, in_chans: int = 3, image_size: int = 224) -> nn.Module:
    """torchvision ResNet-18 (7x7/2 stem + max-pool, BasicBlock x [2, 2, 2, 2])."""
    from torchvision.models import resnet18 as build

    return _stem(build(weights=None, num_classes=num_classes), "conv1", in_chans)


def resnet50(num_classes: int, in_chans: int = 3, image_size: int = 224) -> nn.Module:
    """torchvision ResNet-50 (v1.5: stride on the 3x3 conv of each Bottleneck)."""
    from torchvision.models import resnet50 as build

    return _stem(build(weights=None, num_classes=num_classes), "conv1", in_chans)


def vgg19(num_classes: int, in_chans: int = 3, image_size: int = 224) -> nn.Module:
    """torchvision VGG-19 with BatchNorm (``vgg19_bn``): 7x7 adaptive pooling, 4096-4096 classifier."""
    from torchvision.models import vgg19_bn as build

    return _stem(build(weights=None, num_classes=num_classes), "features.0", in_chans)
