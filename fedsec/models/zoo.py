"""Built-in architectures: a small CNN, an MLP, ResNet-18 (CIFAR) and WRN-16-k."""

from __future__ import annotations

import torch
from torch import nn

from fedsec.models import register_model


def _positive(name: str, value: int) -> int:
    if not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


@register_model("cnn")
def small_cnn(
    *, in_shape: tuple[int, int, int], num_classes: int, width: int = 16, hidden: int = 64
) -> nn.Module:
    """Two 3x3 conv blocks and a two-layer head; adapts to 8x8, 28x28 and 32x32.

    Inputs smaller than 16 px get a single pooling stage (8x8 digits -> 4x4 maps);
    larger ones get two, then an adaptive pool to 4x4 so the head size is fixed.
    """
    c, h, _ = in_shape
    _positive("width", width)
    _positive("hidden", hidden)
    pools = 1 if h < 16 else 2
    layers: list[nn.Module] = [nn.Conv2d(c, width, 3, padding=1), nn.ReLU()]
    if pools == 2:
        layers.append(nn.MaxPool2d(2))
    layers += [nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
    layers += [
        nn.AdaptiveAvgPool2d(4),
        nn.Flatten(),
        nn.Linear(2 * width * 16, hidden),
        nn.ReLU(),
        nn.Linear(hidden, num_classes),
    ]
    return nn.Sequential(*layers)


@register_model("mlp")
def mlp(
    *, in_shape: tuple[int, int, int], num_classes: int, hidden: int = 128, depth: int = 2
) -> nn.Module:
    """A fully connected network: flatten, ``depth - 1`` hidden ReLU layers of ``hidden`` units,
    a linear head."""
    _positive("hidden", hidden)
    _positive("depth", depth)
    dims = [in_shape[0] * in_shape[1] * in_shape[2]] + [hidden] * (depth - 1)
    layers: list[nn.Module] = [nn.Flatten()]
    for a, b in zip(dims, dims[1:]):
        layers += [nn.Linear(a, b), nn.ReLU()]
    layers.append(nn.Linear(dims[-1], num_classes))
    return nn.Sequential(*layers)


@register_model("resnet18")
def resnet18_cifar(*, in_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    """torchvision's ResNet-18 with the CIFAR stem (3x3 stride-1 conv, no max-pool)."""
    import torchvision  # here, not at import: loading a scenario should not pay for it

    net = torchvision.models.resnet18(weights=None, num_classes=num_classes)
    net.conv1 = nn.Conv2d(in_shape[0], 64, 3, stride=1, padding=1, bias=False)
    net.maxpool = nn.Identity()
    return net


# WRN is hand-written because torchvision only ships the ImageNet bottleneck
# wide_resnet50/101, not the CIFAR WRN-d-k of Zagoruyko & Komodakis (2016)
# that the ABD and watermark papers use as teachers and students.
class _WideBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, stride=1, padding=1, bias=False)
        self.shortcut = (
            None if cin == cout and stride == 1 else nn.Conv2d(cin, cout, 1, stride=stride, bias=False)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        o = torch.relu(self.bn1(x))
        y = self.conv1(o)
        y = self.conv2(torch.relu(self.bn2(y)))
        return y + (x if self.shortcut is None else self.shortcut(o))


class WideResNet(nn.Module):
    def __init__(self, depth: int, k: int, in_ch: int, num_classes: int) -> None:
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError(f"depth must be 6n+4 (e.g. 16, 28, 40), got {depth}")
        n = (depth - 4) // 6
        widths = [16, 16 * k, 32 * k, 64 * k]
        self.conv = nn.Conv2d(in_ch, widths[0], 3, padding=1, bias=False)
        blocks: list[nn.Module] = []
        for g in range(3):
            for i in range(n):
                cin = widths[g] if i == 0 else widths[g + 1]
                blocks.append(_WideBlock(cin, widths[g + 1], (1 if g == 0 else 2) if i == 0 else 1))
        self.blocks = nn.Sequential(*blocks)
        self.bn = nn.BatchNorm2d(widths[3])
        self.fc = nn.Linear(widths[3], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.blocks(self.conv(x))))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


@register_model("wrn")
def wrn(*, in_shape: tuple[int, int, int], num_classes: int, depth: int = 16, k: int = 2) -> nn.Module:
    """WRN-depth-k (Zagoruyko & Komodakis, BMVC 2016); WRN-16-2 / WRN-16-1 by default."""
    _positive("k", k)
    return WideResNet(depth, k, in_shape[0], num_classes)
