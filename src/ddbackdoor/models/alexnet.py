"""The CIFAR-sized AlexNet used by the NDSS'23 authors for cross-architecture tests."""

from __future__ import annotations

import torch
from torch import nn

from ddbackdoor.models.layers import Linear
from ddbackdoor.models.registry import flat_features, register


def _lrn() -> nn.Module:
    # The cuda-convnet / TF-tutorial LRN setting the authors' code copies.
    return nn.LocalResponseNorm(4, alpha=0.001 / 9.0, beta=0.75, k=1.0)


@register("alexnet")
class AlexNet(nn.Module):
    """Two 5x5 conv blocks with LRN, then Linear 384 -> 192 -> classes.

    The pools use padding 1 so a 32x32 image reaches the classifier as 64x8x8
    = 4096 features, the size the authors' classifier expects.
    """

    def __init__(self, channels: int, num_classes: int, image_size: int = 32) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(channels, 64, kernel_size=5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
            _lrn(),
            nn.Conv2d(64, 64, kernel_size=5, padding=2),
            nn.ReLU(),
            _lrn(),
            nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
        )
        num_features = flat_features("alexnet", self.features, channels, image_size)
        self.classifier = nn.Sequential(
            nn.Flatten(),
            Linear(num_features, 384),
            nn.ReLU(),
            Linear(384, 192),
            nn.ReLU(),
            Linear(192, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for normalised images ``x``."""
        return self.classifier(self.features(x))
