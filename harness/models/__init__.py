"""Models: a registry of factories ``(num_classes, in_chans, image_size, **kwargs) -> nn.Module``.

CIFAR-style ``resnet18``, ``resnet50`` and ``vgg19`` live here (every one takes ``width``, a
channel multiplier); they serve CIFAR and digits. The same names with ``variant: imagenet`` build
torchvision's ImageNet architectures. ``vit_small`` (timm) and ``yolov8[n|s|m|l]`` (Ultralytics)
register lazily as ``"module:attr"`` strings, so ``pbench-harness --help`` imports neither.
Besides registered names, a track may name any architecture by reference (:mod:`harness.models.refs`:
``torchvision:<name>``, ``timm:<name>``, ``<module>:<factory>``, ``file:<path>``). Architectures
that need more than "never prune the classifier" register a prune adapter keyed by their class
(found through subclasses): timm's ViT family (:mod:`harness.models.vit`), timm's Swin, CaiT, EVA, PVTv2 and MobileViT
(:mod:`harness.models.timm_attn`), timm's MLP-Mixer (:mod:`harness.models.mixer`), timm's ReXNet
(:mod:`harness.models.rexnet`), torchvision's ShuffleNetV2 (:mod:`harness.models.shufflenet`), ConvNeXt
(:mod:`harness.models.convnext`), YOLOv8
(:mod:`harness.models.yolo`), every ``transformers`` model (:mod:`harness.models.hf`); Swin's patch merging
(:mod:`harness.models.merging`) serves timm's and transformers' Swin. tests/test_models.py checks
the CIFAR family; tests/test_models_zoo.py prunes every registered name and variant;
tests/test_models_refs.py the references; tests/test_hf_models.py and tests/test_prune_adapters.py the
adapters against the narrower models the libraries build; tests/test_zoo.py every method on twelve more
architectures.
"""

from harness.models.base import (MODELS, PRUNE_ADAPTERS, VARIANTS, build_model, create_model, logits_of,
                                 prune_config_of, variants_of)
from harness.models.heads import classifier_of

# Imported for their registrations.
from harness.models import cifar_resnet as _cifar_resnet  # noqa: E402,F401
from harness.models import cifar_vgg as _cifar_vgg  # noqa: E402,F401

for _name in ("resnet18", "resnet50", "vgg19"):
    VARIANTS.register(f"{_name}/imagenet", f"harness.models.imagenet:{_name}")
MODELS.register("vit_small", "harness.models.vit:vit_small")
for _size in "nsml":
    MODELS.register(f"yolov8{_size}", f"harness.models.yolo:yolov8{_size}")
MODELS.register("yolov8", "harness.models.yolo:yolov8")  # PruningBench's YOLOv8 (= yolov8m)
PRUNE_ADAPTERS.register("timm.models.vision_transformer.VisionTransformer", "harness.models.vit:prune_config")
PRUNE_ADAPTERS.register("ultralytics.nn.tasks.DetectionModel", "harness.models.yolo:prune_config")
PRUNE_ADAPTERS.register("timm.models.convnext.ConvNeXt", "harness.models.convnext:prune_config")
PRUNE_ADAPTERS.register("torchvision.models.convnext.ConvNeXt", "harness.models.convnext:prune_config")
PRUNE_ADAPTERS.register("transformers.modeling_utils.PreTrainedModel", "harness.models.hf:prune_config")
PRUNE_ADAPTERS.register("timm.models.swin_transformer.SwinTransformer", "harness.models.timm_attn:swin")
PRUNE_ADAPTERS.register("timm.models.cait.Cait", "harness.models.timm_attn:mlp_only")
PRUNE_ADAPTERS.register("timm.models.eva.Eva", "harness.models.timm_attn:mlp_only")
PRUNE_ADAPTERS.register("timm.models.mlp_mixer.MlpMixer", "harness.models.mixer:prune_config")
PRUNE_ADAPTERS.register("timm.models.pvt_v2.PyramidVisionTransformerV2", "harness.models.timm_attn:mlp_only")
PRUNE_ADAPTERS.register("timm.models.byobnet.ByobNet", "harness.models.timm_attn:byobnet")
PRUNE_ADAPTERS.register("torchvision.models.shufflenetv2.ShuffleNetV2", "harness.models.shufflenet:prune_config")
PRUNE_ADAPTERS.register("timm.models.rexnet.RexNet", "harness.models.rexnet:prune_config")

__all__ = ["MODELS", "PRUNE_ADAPTERS", "VARIANTS", "build_model", "classifier_of", "create_model", "logits_of",
           "prune_config_of",
           "variants_of"]
