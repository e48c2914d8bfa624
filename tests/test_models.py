"""Model zoo: the registry-wide contract (shapes, classifier, Torch-Pruning grouping) and
reference parameter counts."""

from __future__ import annotations

import pytest
import torch
import torch_pruning as tp
from torch import nn

from harness.models import classifier_of, create_model
from harness.models.cifar_vgg import VGG19_CFG
from harness.registry import UnknownName

#: the CIFAR-style family (width multiplier, any input size); the rest of the zoo (ImageNet variants,
#: ViT, YOLOv8) is covered by tests/test_models_zoo.py and tests/test_detection.py
NAMES = ["resnet18", "resnet50", "vgg19"]
INPUTS = [pytest.param(1, 8, id="1x8x8"), pytest.param(3, 32, id="3x32x32")]
WIDTH = 0.125  # small widths keep every test fast; the structure is the same


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


# --- contract, generated from the registry -----------------------------------------


@pytest.mark.parametrize("in_chans,size", INPUTS)
@pytest.mark.parametrize("name", NAMES)
def test_forward_shape(name, in_chans, size):
    model = create_model(name, num_classes=7, in_chans=in_chans, image_size=size, width=WIDTH).eval()
    with torch.no_grad():
        out = model(torch.randn(2, in_chans, size, size))
    assert out.shape == (2, 7)
    # One training step's worth of gradient reaches the stem.
    model.train()
    model(torch.randn(4, in_chans, size, size)).sum().backward()
    stem = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    assert stem.in_channels == in_chans and stem.weight.grad is not None


@pytest.mark.parametrize("name", NAMES)
def test_classifier_of(name):
    model = create_model(name, num_classes=5, width=WIDTH).eval()
    fc = classifier_of(model)
    assert isinstance(fc, nn.Linear) and fc.out_features == 5
    # It really is the last layer: its output is the model's output.
    seen = {}
    fc.register_forward_hook(lambda m, i, o: seen.setdefault("out", o))
    with torch.no_grad():
        out = model(torch.randn(2, 3, 32, 32))
    assert torch.equal(seen["out"], out)


@pytest.mark.parametrize("name", NAMES)
def test_width_scales_channels(name):
    narrow = create_model(name, num_classes=10, width=WIDTH)
    stem = next(m for m in narrow.modules() if isinstance(m, nn.Conv2d))
    assert stem.out_channels == 8  # 64 * 0.125
    tiny = create_model(name, num_classes=10, width=1e-3)  # every layer keeps >= 1 channel
    assert all(m.out_channels >= 1 for m in tiny.modules() if isinstance(m, nn.Conv2d))


@pytest.mark.parametrize("in_chans,size", INPUTS)
@pytest.mark.parametrize("name", NAMES)
def test_group_and_prune_first_group(name, in_chans, size):
    model = create_model(name, num_classes=10, in_chans=in_chans, image_size=size, width=WIDTH).eval()
    example = torch.randn(1, in_chans, size, size)
    fc = classifier_of(model)
    dg = tp.DependencyGraph().build_dependency(model, example_inputs=example)
    groups = list(dg.get_all_groups(ignored_layers=[fc], root_module_types=[nn.Conv2d, nn.Linear]))
    assert groups, "no prunable group"
    root = groups[0][0].dep
    layer, handler = root.target.module, root.handler
    n = len(groups[0][0].idxs)
    before = n_params(model)
    # Prune 50% of the first group: the channels with the smallest L1 norm of the root layer.
    l1 = layer.weight.detach().abs().flatten(1).sum(1)
    idxs = l1.argsort()[: n // 2].tolist()
    group = dg.get_pruning_group(layer, handler, idxs)
    assert dg.check_pruning_group(group)
    group.prune()
    assert layer.weight.shape[0] == n - n // 2
    assert n_params(model) < before
    assert fc.out_features == 10
    with torch.no_grad():
        assert model(example).shape == (1, 10)


@pytest.mark.parametrize("name", NAMES)
def test_magnitude_pruner_halves_the_model(name):
    model = create_model(name, num_classes=10, width=WIDTH).eval()
    example = torch.randn(1, 3, 32, 32)
    fc = classifier_of(model)
    macs0, params0 = tp.utils.count_ops_and_params(model, example)
    pruner = tp.pruner.MagnitudePruner(
        model, example, importance=tp.importance.MagnitudeImportance(p=1),
        pruning_ratio=0.5, ignored_layers=[fc],
    )
    pruner.step()
    macs1, params1 = tp.utils.count_ops_and_params(model, example)
    assert macs1 < 0.4 * macs0 and params1 < 0.4 * params0  # ~ (1/2)^2 on conv-conv pairs
    assert fc.out_features == 10
    with torch.no_grad():
        assert model(example).shape == (1, 10)


# --- reference parameter counts ---------------------------------------------------------


def test_resnet18_param_count():
    # kuangliu/pytorch-cifar ResNet18 for CIFAR-10.
    assert n_params(create_model("resnet18", num_classes=10)) == 11_173_962


def test_resnet50_param_count_matches_torchvision():
    """Independent reference: torchvision's ResNet-50 (same Bottleneck, stride on the 3x3,
    1x1-conv+BN projection shortcuts) with its 7x7/2 stem replaced by a 3x3/1 conv; the
    max-pool it drops has no parameters. 23,705,252 is kuangliu's ResNet50 with 100 classes."""
    torchvision = pytest.importorskip("torchvision")
    ref = torchvision.models.resnet50(weights=None, num_classes=100)
    ref.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
    ref.maxpool = nn.Identity()
    ours = create_model("resnet50", num_classes=100)
    assert n_params(ours) == n_params(ref) == 23_705_252
    # Layer by layer, not just in total.
    shapes = lambda m: sorted(tuple(p.shape) for p in m.parameters())  # noqa: E731
    assert shapes(ours) == shapes(ref)
    with torch.no_grad():
        assert ours.eval()(torch.randn(1, 3, 32, 32)).shape == (1, 100)


def test_vgg19_param_count_and_forward():
    # Hand formula: 3x3 conv with bias + BN (weight, bias) per cfg entry, then one Linear.
    expected, c = 0, 3
    for v in VGG19_CFG:
        if v != "M":
            expected += 9 * c * v + v + 2 * v
            c = v
    expected += c * 10 + 10
    model = create_model("vgg19", num_classes=10)
    assert n_params(model) == expected == 20_040_522
    with torch.no_grad():
        assert model.eval()(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_vgg19_state_dict_does_not_depend_on_image_size():
    a = create_model("vgg19", num_classes=10, in_chans=1, image_size=8, width=WIDTH)
    b = create_model("vgg19", num_classes=10, in_chans=1, image_size=32, width=WIDTH)
    assert sum(isinstance(m, nn.MaxPool2d) for m in a.modules()) == 3  # 8 -> 4 -> 2 -> 1
    assert sum(isinstance(m, nn.MaxPool2d) for m in b.modules()) == 5
    b.load_state_dict(a.state_dict())


def test_unknown_model_suggests():
    with pytest.raises(UnknownName) as e:
        create_model("resnet1", num_classes=10)
    assert "'resnet18'" in str(e.value)


def test_classifier_of_fallbacks():
    seq = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    assert classifier_of(seq) is seq[4]
    with pytest.raises(ValueError, match="cannot find the classifier"):
        classifier_of(nn.Conv2d(3, 4, 3))
