"""Models: a registry of factories ``(num_classes, in_chans, image_size, **kwargs) -> nn.Module``.

CIFAR-style ``resnet18``, ``resnet50`` and ``vgg19`` live here; every factory
takes ``width`` (channel multiplier). Heavy families register lazily as
``"module:attr"`` strings, e.g. ``MODELS.register("yolov8", "harness.zoo.yolo:yolov8")``.
tests/test_models.py runs every registered name through the same checks.
"""

from harness.models.base import MODELS, classifier_of, create_model

# Imported for their registrations.
from harness.models import cifar_resnet as _cifar_resnet  # noqa: E402,F401
from harness.models import cifar_vgg as _cifar_vgg  # noqa: E402,F401

__all__ = ["MODELS", "classifier_of", "create_model"]
