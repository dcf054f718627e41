"""VGG-style networks: the paper's CIFAR VGG-16 and a small VGG for 28×28 inputs.

Plain conv→BN→ReLU stacks with max pooling: exactly the ops QFFS converts (BN folds into the
conv, max pooling becomes event max pooling).
"""

from __future__ import annotations

from torch import nn

#: CIFAR VGG-16 layout (Simonyan & Zisserman, configuration D, 32×32 inputs); "M" = 2×2 max pool.
VGG16_CFG: tuple[int | str, ...] = (
    64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M",
)
#: Small VGG for Fashion-MNIST/MNIST: 28 → 14 → 7.
VGG_SMALL_CFG: tuple[int | str, ...] = (32, 32, "M", 64, 64, "M")


def _features(cfg: tuple[int | str, ...], in_channels: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    channels = in_channels
    for item in cfg:
        if item == "M":
            layers.append(nn.MaxPool2d(2))
        else:
            layers += [
                nn.Conv2d(channels, int(item), 3, padding=1, bias=False),
                nn.BatchNorm2d(int(item)),
                nn.ReLU(inplace=True),
            ]
            channels = int(item)
    return nn.Sequential(*layers)


class VGG(nn.Module):
    """conv/BN/ReLU feature stack, flatten, and an MLP classifier."""

    def __init__(self, cfg: tuple[int | str, ...], num_classes: int, in_channels: int,
                 image_size: int, hidden: int | None, dropout: float = 0.0):
        super().__init__()
        self.features = _features(cfg, in_channels)
        pools = sum(1 for item in cfg if item == "M")
        channels = [item for item in cfg if item != "M"][-1]
        flat = int(channels) * (image_size // 2**pools) ** 2
        head: list[nn.Module] = [nn.Flatten()]
        if hidden:
            head += [nn.Dropout(dropout), nn.Linear(flat, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout)]
            flat = hidden
        head.append(nn.Linear(flat, num_classes))
        self.classifier = nn.Sequential(*head)

    def forward(self, x):
        return self.classifier(self.features(x))


def vgg16(num_classes: int = 10, in_channels: int = 3, image_size: int = 32) -> VGG:
    """The paper's CIFAR VGG-16: 13 conv layers with BN, one linear classifier."""
    return VGG(VGG16_CFG, num_classes, in_channels, image_size, hidden=None)


def vgg_small(num_classes: int = 10, in_channels: int = 1, image_size: int = 28) -> VGG:
    """A small VGG for 28×28 images (Fashion-MNIST): 4 conv layers, a 128-unit hidden layer."""
    return VGG(VGG_SMALL_CFG, num_classes, in_channels, image_size, hidden=128, dropout=0.2)
