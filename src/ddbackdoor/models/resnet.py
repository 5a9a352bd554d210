"""CIFAR-style ResNet18 (3x3 stem, no max pool) for cross-architecture tests."""

from __future__ import annotations

import torch
from torch import nn

from ddbackdoor.models.convnet import make_norm
from ddbackdoor.models.layers import Linear
from ddbackdoor.models.registry import check_choice, register

NORMS = ("instancenorm", "batchnorm")


class BasicBlock(nn.Module):
    """Two 3x3 convs with a residual connection.

    Submodules are registered in forward order and each ReLU is its own module,
    so hooks that walk ``modules()`` see the layers as they are applied. The
    residual sum is out of place because the models run under double backward.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int, norm: str) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1, bias=False)
        self.norm1 = make_norm(norm, out_channels)
        self.act1 = nn.ReLU()
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1, bias=False)
        self.norm2 = make_norm(norm, out_channels)
        self.shortcut: nn.Module | None = None
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride, bias=False),
                make_norm(norm, out_channels),
            )
        self.act2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Residual block output for ``x``."""
        out = self.act1(self.norm1(self.conv1(x)))
        out = self.norm2(self.conv2(out))
        residual = x if self.shortcut is None else self.shortcut(x)
        return self.act2(out + residual)


@register("resnet18")
class ResNet18(nn.Module):
    """ResNet18 with BasicBlocks [2, 2, 2, 2] and an adaptive average pool.

    The adaptive pool makes the head Linear(512 -> classes) at every image size.
    """

    def __init__(
        self,
        channels: int,
        num_classes: int,
        image_size: int = 32,
        *,
        norm: str = "instancenorm",
    ) -> None:
        super().__init__()
        check_choice("resnet18", "norm", norm, NORMS)
        del image_size  # any size works thanks to the adaptive pool
        self.stem = nn.Sequential(
            nn.Conv2d(channels, 64, kernel_size=3, padding=1, bias=False),
            make_norm(norm, 64),
            nn.ReLU(),
        )
        stages: list[nn.Module] = []
        in_channels = 64
        for width, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            stages.append(
                nn.Sequential(
                    BasicBlock(in_channels, width, stride, norm),
                    BasicBlock(width, width, 1, norm),
                )
            )
            in_channels = width
        self.layers = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for normalised images ``x``."""
        return self.fc(self.flatten(self.pool(self.layers(self.stem(x)))))
