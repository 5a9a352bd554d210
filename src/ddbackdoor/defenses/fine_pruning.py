"""Fine-Pruning (Liu et al., RAID 2018): prune dormant last-conv channels, then fine-tune.

Channels of the last convolutional layer are ranked by their mean activation
on the defender's clean data (read after the activation that follows the
conv, as the authors read the last conv layer's output) and removed in
increasing order until clean accuracy on that data would fall by more than
`max_acc_drop` (their stopping rule; `ratio` prunes a fixed share instead).
Removal is a fixed channel mask on that output, which stays in place while
the pruned network is fine-tuned on the clean set.

Why a mask instead of zeroing conv weights: with a norm layer after the conv
(the ConvNet's instance norm), a zeroed filter still emits the norm's bias.
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import nn

from ..errors import ConfigError
from ..evaluate import attack_metrics
from ..triggers import ACTIVATIONS
from .base import Defense, DefenseData, Options, accuracy, fine_tune, working_copy


class FinePruningOptions(Options):
    max_acc_drop: float = Field(0.04, ge=0, le=1)
    ratio: float | None = Field(None, ge=0, le=1)
    epochs: int = Field(20, ge=0)
    lr: float = Field(0.01, gt=0)
    batch: int = Field(64, ge=1)


def last_conv_output(net: nn.Module) -> nn.Module:
    """The module whose output is the last conv layer's activation map."""
    leaves = [m for m in net.modules() if not list(m.children())]
    convs = [i for i, m in enumerate(leaves) if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ConfigError(f"fine-pruning needs a convolutional network; {type(net).__name__} has no Conv2d")
    after = [m for m in leaves[convs[-1] + 1 :] if isinstance(m, ACTIVATIONS)]
    return after[0] if after else leaves[convs[-1]]


class ChannelMask:
    """A forward hook that zeroes chosen channels of a module's output; stays until `remove`."""

    def __init__(self, module: nn.Module, channels: int, device: torch.device):
        self.keep = torch.ones(channels, device=device)
        self.handle = module.register_forward_hook(self._hook)

    def _hook(self, _module: nn.Module, _inputs: object, output: torch.Tensor) -> torch.Tensor:
        return output * self.keep.view(1, -1, *([1] * (output.dim() - 2)))

    def prune(self, channels: torch.Tensor) -> None:
        self.keep.fill_(1.0)
        self.keep[channels] = 0.0

    def remove(self) -> None:
        self.handle.remove()


@torch.inference_mode()
def mean_channel_activation(net: nn.Module, module: nn.Module, images: torch.Tensor, batch: int = 512):
    net.eval()
    sums: list[torch.Tensor] = []
    handle = module.register_forward_hook(
        lambda _m, _i, out: sums.append(out.transpose(0, 1).flatten(1).sum(1))
    )
    try:
        for start in range(0, images.shape[0], batch):
            net(images[start : start + batch])
    finally:
        handle.remove()
    return torch.stack(sums).sum(0) / images.shape[0]


def prune_count(net: nn.Module, mask: ChannelMask, order: torch.Tensor, data: DefenseData, opts) -> tuple:
    """How many channels to prune: a fixed ratio, or as many as the accuracy budget allows."""
    clean = data.clean
    base = accuracy(net, clean.images, clean.labels)
    if opts.ratio is not None:
        return round(opts.ratio * order.numel()), base, []
    trace = []
    count = 0
    for k in range(1, order.numel()):  # never prune every channel
        mask.prune(order[:k])
        acc = accuracy(net, clean.images, clean.labels)
        trace.append(acc)
        if acc < base - opts.max_acc_drop:
            break
        count = k
    return count, base, trace


def run(model: nn.Module, data: DefenseData, opts: FinePruningOptions, generator: torch.Generator) -> dict:
    net = working_copy(model).eval()
    before = attack_metrics(net, data.tests)
    module = last_conv_output(net)
    activation = mean_channel_activation(net, module, data.clean.images)
    order = torch.argsort(activation)
    mask = ChannelMask(module, activation.numel(), activation.device)
    count, base_acc, trace = prune_count(net, mask, order, data, opts)
    mask.prune(order[:count])
    after_pruning = attack_metrics(net, data.tests)
    fine_tune(
        net,
        data.clean.images,
        data.clean.labels,
        opts.epochs,
        opts.lr,
        opts.batch,
        generator,
        desc="fine-pruning",
        progress=data.progress,
    )
    return {
        "channels": int(activation.numel()),
        "pruned": count,
        "pruned_channels": [int(c) for c in order[:count]],
        "clean_set_accuracy": {"before": base_acc, "pruning_trace": trace},
        "before": before,
        "after_pruning": after_pruning,
        "after": attack_metrics(net, data.tests),
    }


DEFENSE = Defense(
    "fine_pruning",
    "model",
    FinePruningOptions,
    run,
    description="Fine-Pruning (Liu et al. 2018): prune dormant last-conv channels, then fine-tune",
)
