"""Small baselines: an MLP and LeNet, for cheap cross-architecture checks."""

from __future__ import annotations

import torch
from torch import nn

from ddbackdoor.models.layers import Linear
from ddbackdoor.models.registry import flat_features, register


@register("mlp")
class MLP(nn.Module):
    """Flatten -> Linear 128 -> ReLU -> Linear 128 -> ReLU -> Linear classes."""

    def __init__(self, channels: int, num_classes: int, image_size: int = 32) -> None:
        super().__init__()
        self.classifier = nn.Sequential(
            nn.Flatten(),
            Linear(channels * image_size * image_size, 128),
            nn.ReLU(),
            Linear(128, 128),
            nn.ReLU(),
            Linear(128, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for normalised images ``x``."""
        return self.classifier(x)


@register("lenet")
class LeNet(nn.Module):
    """LeNet-5: two 5x5 conv blocks, then Linear 120 -> 84 -> classes.

    1-channel input gets padding 2 on the first conv, the classic 28x28 MNIST
    setting, as in the dataset-distillation code.
    """

    def __init__(self, channels: int, num_classes: int, image_size: int = 32) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(channels, 6, kernel_size=5, padding=2 if channels == 1 else 0),
            nn.ReLU(),
            nn.MaxPool2d(kernel_size=2, stride=2),
            nn.Conv2d(6, 16, kernel_size=5),
            nn.ReLU(),
            nn.MaxPool2d(kernel_size=2, stride=2),
        )
        num_features = flat_features("lenet", self.features, channels, image_size)
        self.classifier = nn.Sequential(
            nn.Flatten(),
            Linear(num_features, 120),
            nn.ReLU(),
            Linear(120, 84),
            nn.ReLU(),
            Linear(84, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for normalised images ``x``."""
        return self.classifier(self.features(x))
