"""CIFAR-style VGG with BatchNorm (kuangliu/pytorch-cifar, Torch-Pruning benchmarks)."""

from __future__ import annotations

from torch import Tensor, nn

from harness.models.base import MODELS, scaled

VGG19_CFG: list[int | str] = [
    64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M",
]


class CifarVGG(nn.Module):
    def __init__(
        self,
        cfg: list[int | str],
        num_classes: int,
        in_chans: int = 3,
        image_size: int = 32,
        width: float = 1.0,
    ):
        super().__init__()
        layers: list[nn.Module] = []
        channels, side = in_chans, image_size
        for v in cfg:
            if v == "M":
                # A pool that would shrink the map below 1x1 (e.g. the 4th and 5th
                # on 8x8 digits) becomes an Identity, so state_dict keys do not
                # depend on the input size.
                if side // 2 >= 1:
                    layers.append(nn.MaxPool2d(2, 2))
                    side //= 2
                else:
                    layers.append(nn.Identity())
            else:
                out = scaled(int(v), width)
                layers += [nn.Conv2d(channels, out, 3, padding=1), nn.BatchNorm2d(out), nn.ReLU(inplace=True)]
                channels = out
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(channels, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.avgpool(self.features(x)).flatten(1))


@MODELS.decorator
def vgg19(num_classes: int, in_chans: int = 3, image_size: int = 32, width: float = 1.0) -> CifarVGG:
    """CIFAR VGG-19 with BatchNorm; one Linear classifier after global average pooling."""
    return CifarVGG(VGG19_CFG, num_classes, in_chans, image_size, width)
