"""The ConvNet of the dataset-distillation literature, NDSS'23 variant.

The backdoor-on-distillation paper (Liu et al., NDSS'23) trains a DC-style
ConvNet with an extra hidden Linear + ReLU before the classifier, because the
DOORPING trigger update reads the output of that penultimate layer.
``hidden=0`` gives back the original DC ConvNet with a single Linear head.

The norm and activation factories here are shared with `vgg` and `resnet` so
that "instancenorm" means the same module everywhere.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ddbackdoor.errors import ConfigError
from ddbackdoor.models.layers import Linear
from ddbackdoor.models.registry import check_choice, check_int, flat_features, register

NORMS = ("instancenorm", "batchnorm", "layernorm", "groupnorm", "none")
ACTS = ("relu", "sigmoid", "leakyrelu")
POOLINGS = ("avgpooling", "maxpooling", "none")

GROUPNORM_GROUPS = 4

# "instancenorm" is GroupNorm with one group per channel (as in the DC code):
# unlike nn.InstanceNorm2d it has affine parameters by default and behaves the
# same in train and eval mode, which distillation relies on.
_NORM_FACTORIES: dict[str, Callable[[int], nn.Module]] = {
    "instancenorm": lambda c: nn.GroupNorm(c, c, affine=True),
    "batchnorm": lambda c: nn.BatchNorm2d(c),
    "layernorm": lambda c: nn.GroupNorm(1, c, affine=True),
    "groupnorm": lambda c: nn.GroupNorm(GROUPNORM_GROUPS, c, affine=True),
}

_ACT_FACTORIES: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "sigmoid": nn.Sigmoid,
    "leakyrelu": lambda: nn.LeakyReLU(negative_slope=0.01),
}

_POOL_FACTORIES: dict[str, Callable[[], nn.Module]] = {
    "avgpooling": lambda: nn.AvgPool2d(kernel_size=2, stride=2),
    "maxpooling": lambda: nn.MaxPool2d(kernel_size=2, stride=2),
}


def make_norm(kind: str, channels: int) -> nn.Module:
    """A 2-d norm layer of `kind` (any of `NORMS` except "none")."""
    return _NORM_FACTORIES[kind](channels)


def norm_layers(kind: str, channels: int) -> list[nn.Module]:
    """Zero or one norm layers, so "none" adds no placeholder leaf module."""
    return [] if kind == "none" else [make_norm(kind, channels)]


def first_conv_padding(channels: int, index: int) -> int:
    """Padding of conv number `index`: 3 for the first conv on 1-channel input.

    This reproduces the authors' code (28x28 MNIST becomes 32x32 after the
    first conv); everything else uses the size-preserving padding 1.
    """
    return 3 if channels == 1 and index == 0 else 1


@register("convnet")
class ConvNet(nn.Module):
    """depth x [conv 3x3, norm, act, pool 2x2] -> Linear(hidden) -> ReLU -> Linear."""

    def __init__(
        self,
        channels: int,
        num_classes: int,
        image_size: int = 32,
        *,
        width: int = 128,
        depth: int = 3,
        norm: str = "instancenorm",
        act: str = "relu",
        pooling: str = "avgpooling",
        hidden: int = 192,
    ) -> None:
        super().__init__()
        check_int("convnet", "width", width, 1)
        check_int("convnet", "depth", depth, 1)
        check_int("convnet", "hidden", hidden, 0)
        check_choice("convnet", "norm", norm, NORMS)
        check_choice("convnet", "act", act, ACTS)
        check_choice("convnet", "pooling", pooling, POOLINGS)
        if norm == "groupnorm" and width % GROUPNORM_GROUPS:
            raise ConfigError(
                f"convnet norm 'groupnorm' needs width divisible by {GROUPNORM_GROUPS}, got width {width}"
            )

        layers: list[nn.Module] = []
        in_channels = channels
        for index in range(depth):
            padding = first_conv_padding(channels, index)
            layers.append(nn.Conv2d(in_channels, width, kernel_size=3, padding=padding))
            layers.extend(norm_layers(norm, width))
            layers.append(_ACT_FACTORIES[act]())
            if pooling != "none":
                layers.append(_POOL_FACTORIES[pooling]())
            in_channels = width
        self.features = nn.Sequential(*layers)

        num_features = flat_features("convnet", self.features, channels, image_size)
        head: list[nn.Module] = [nn.Flatten()]
        if hidden:
            head += [Linear(num_features, hidden), nn.ReLU(), Linear(hidden, num_classes)]
        else:
            head.append(Linear(num_features, num_classes))
        self.classifier = nn.Sequential(*head)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for normalised images ``x``."""
        return self.classifier(self.features(x))
