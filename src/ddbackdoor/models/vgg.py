"""VGG11 as used for 32x32 images in the dataset-distillation literature."""

from __future__ import annotations

import torch
from torch import nn

from ddbackdoor.models.convnet import first_conv_padding, norm_layers
from ddbackdoor.models.layers import Linear
from ddbackdoor.models.registry import check_choice, flat_features, register

NORMS = ("instancenorm", "batchnorm", "none")

# Conv widths per stage; every stage ends in a 2x2 max pool.
VGG11_STAGES: tuple[tuple[int, ...], ...] = ((64,), (128,), (256, 256), (512, 512), (512, 512))


@register("vgg11")
class VGG11(nn.Module):
    """VGG11 with 3x3 convs, a configurable norm, ReLU and a single Linear head.

    At 32x32 the five pools leave a 512x1x1 map, so the head is
    Linear(512 -> classes). A pool that would leave the following convs a map
    below 2x2 (or the head a map below 1x1) is left out, which is what lets
    the same network accept images down to 16x16 (where the original code
    fails); 32x32 and larger powers of two are unaffected.
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
        check_choice("vgg11", "norm", norm, NORMS)
        layers: list[nn.Module] = []
        in_channels = channels
        size = image_size
        index = 0
        for number, stage in enumerate(VGG11_STAGES, start=1):
            for width in stage:
                padding = first_conv_padding(channels, index)
                layers.append(nn.Conv2d(in_channels, width, kernel_size=3, padding=padding))
                layers.extend(norm_layers(norm, width))
                layers.append(nn.ReLU())
                size += 2 * padding - 2
                in_channels = width
                index += 1
            # Convs that follow need >= 2x2 maps (a 1x1 map cannot be instance-normed).
            smallest = 1 if number == len(VGG11_STAGES) else 2
            if size // 2 >= smallest:
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
                size //= 2
        self.features = nn.Sequential(*layers)
        num_features = flat_features("vgg11", self.features, channels, image_size)
        self.classifier = nn.Sequential(nn.Flatten(), Linear(num_features, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for normalised images ``x``."""
        return self.classifier(self.features(x))
