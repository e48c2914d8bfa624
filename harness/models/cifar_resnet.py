"""CIFAR-style ResNets (3x3 stride-1 stem, no max-pool), as in kuangliu/pytorch-cifar
and Torch-Pruning's benchmarks. ``resnet18`` at width 1 has 11,173,962 parameters
for 10 classes; ``resnet50`` has 23,705,252 for 100 classes."""

from __future__ import annotations

from torch import Tensor, nn

from harness.models.base import MODELS, scaled


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = _shortcut(in_planes, planes * self.expansion, stride)

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        out_planes = planes * self.expansion
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)  # stride on the 3x3 ("v1.5")
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_planes, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = _shortcut(in_planes, out_planes, stride)

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + self.shortcut(x))


def _shortcut(in_planes: int, out_planes: int, stride: int) -> nn.Module:
    if stride == 1 and in_planes == out_planes:
        return nn.Sequential()  # identity; an empty Sequential keeps kuangliu's state_dict keys
    return nn.Sequential(
        nn.Conv2d(in_planes, out_planes, 1, stride, bias=False),
        nn.BatchNorm2d(out_planes),
    )


class CifarResNet(nn.Module):
    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        num_blocks: list[int],
        num_classes: int,
        in_chans: int = 3,
        width: float = 1.0,
    ):
        super().__init__()
        stem = scaled(64, width)
        self.conv1 = nn.Conv2d(in_chans, stem, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(stem)
        self.relu = nn.ReLU(inplace=True)
        self.in_planes = stem
        self.layer1 = self._make_layer(block, scaled(64, width), num_blocks[0], 1)
        self.layer2 = self._make_layer(block, scaled(128, width), num_blocks[1], 2)
        self.layer3 = self._make_layer(block, scaled(256, width), num_blocks[2], 2)
        self.layer4 = self._make_layer(block, scaled(512, width), num_blocks[3], 2)
        # Adaptive pooling (not kuangliu's fixed 4x4) so any input size >= 8 works.
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(self.in_planes, num_classes)

    def _make_layer(self, block, planes: int, n: int, stride: int) -> nn.Sequential:
        layers = []
        for s in [stride] + [1] * (n - 1):
            layers.append(block(self.in_planes, planes, s))
            self.in_planes = planes * block.expansion
        return nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(self.avgpool(x).flatten(1))


@MODELS.decorator
def resnet18(num_classes: int, in_chans: int = 3, image_size: int = 32, width: float = 1.0) -> CifarResNet:
    """CIFAR ResNet-18: BasicBlock x [2, 2, 2, 2]."""
    return CifarResNet(BasicBlock, [2, 2, 2, 2], num_classes, in_chans, width)


@MODELS.decorator
def resnet50(num_classes: int, in_chans: int = 3, image_size: int = 32, width: float = 1.0) -> CifarResNet:
    """CIFAR ResNet-50: Bottleneck (expansion 4) x [3, 4, 6, 3]."""
    return CifarResNet(Bottleneck, [3, 4, 6, 3], num_classes, in_chans, width)
