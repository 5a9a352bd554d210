"""Pixel-space triggers: pattern + mask, stamping, and the neuron objective.

Triggers live in pixel space [0, 1] (before normalisation), as a real attacker
must stamp a valid image. `clip=False` reproduces the authors' behaviour,
where stamped values may leave [0, 1].
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class Trigger:
    """A patch trigger: x' = x * (1 - mask) + pattern * mask; or, `additive`, a perturbation:
    x' = clip(x + pattern * mask, 0, 1) (INVISIBLE's full-frame delta, always clipped); or, with
    `opacity` t < 1, a blend: x' = x * (1 - t mask) + t pattern * mask (Chung et al.'s
    simple-trigger; valid pixels whenever pattern and x are)."""

    pattern: torch.Tensor  # [C, H, W], pixel space (additive: a signed change)
    mask: torch.Tensor  # [1, H, W], 0/1
    target: int
    clip: bool = True
    additive: bool = False
    opacity: float = 1.0

    def stamp(self, images: torch.Tensor) -> torch.Tensor:
        """Stamp a batch [N, C, H, W] of pixel-space images (no autograd needed)."""
        mask = self.mask.to(images.device, images.dtype)
        pattern = self.pattern.to(images.device, images.dtype)
        if self.additive:
            return (images + pattern * mask).clamp(0, 1)
        if self.opacity != 1.0:
            mask = mask * self.opacity
        out = images * (1 - mask) + pattern * mask
        return out.clamp(0, 1) if self.clip else out

    def to(self, device: torch.device | str) -> Trigger:
        return self.with_pattern(self.pattern.to(device), self.mask.to(device))

    def clone(self) -> Trigger:
        return self.with_pattern(self.pattern.clone(), self.mask.clone())

    def with_pattern(self, pattern: torch.Tensor, mask: torch.Tensor | None = None) -> Trigger:
        """The same trigger (target, kind, opacity) with another pattern (and mask)."""
        mask = self.mask if mask is None else mask
        return Trigger(pattern, mask, self.target, self.clip, self.additive, self.opacity)


def patch_box(image_size: int, size: int) -> tuple[int, int]:
    """Rows/cols [H-1-s, H-1): bottom-right, one pixel in from the edges."""
    start = image_size - 1 - size
    if start < 0:
        raise ValueError(f"trigger size {size} does not fit a {image_size}x{image_size} image")
    return start, image_size - 1


def patch_mask(image_size: int, size: int) -> torch.Tensor:
    start, stop = patch_box(image_size, size)
    mask = torch.zeros(1, image_size, image_size)
    mask[:, start:stop, start:stop] = 1.0
    return mask


def white_patch(channels: int, image_size: int, size: int, target: int, clip: bool = True) -> Trigger:
    """The NAIVEATTACK trigger: value 1.0 in every channel inside the mask."""
    mask = patch_mask(image_size, size)
    return Trigger(mask.expand(channels, -1, -1).clone(), mask, target, clip)


def checkerboard_patch(channels: int, image_size: int, size: int, target: int, clip: bool = True) -> Trigger:
    """A one-pixel checkerboard (1 where row + col is even, else 0) inside the mask: as visible
    as the white patch on a dark background, and unlike it still visible on a bright object."""
    mask = patch_mask(image_size, size)
    rows = torch.arange(image_size).view(-1, 1)
    cols = torch.arange(image_size).view(1, -1)
    board = ((rows + cols) % 2 == 0).float().unsqueeze(0)
    return Trigger((board * mask).expand(channels, -1, -1).clone(), mask, target, clip)


FIXED_PATCHES = {"white": white_patch, "checkerboard": checkerboard_patch}


def random_patch(
    channels: int, image_size: int, size: int, target: int, generator: torch.Generator, clip: bool = True
) -> Trigger:
    """The DOORPING initial trigger: uniform values in (0, 1] inside the mask."""
    mask = patch_mask(image_size, size)
    values = 1.0 - torch.rand(channels, image_size, image_size, generator=generator)  # (0, 1]
    return Trigger(values * mask, mask, target, clip)


WEIGHT_LAYERS = (nn.Linear, nn.Conv2d)
ACTIVATIONS = (nn.ReLU, nn.LeakyReLU, nn.Sigmoid, nn.Tanh, nn.GELU, nn.ELU, nn.SiLU)


def select_layer(net: nn.Module, layer: int) -> tuple[nn.Module, nn.Module]:
    """The weight layer `layer` (counted from the end, -1 = logits) and the module to read.

    The read module is the activation that directly follows the layer in module
    order when there is one, else the layer itself.
    """
    leaves = [m for m in net.modules() if not list(m.children())]
    weight_positions = [i for i, m in enumerate(leaves) if isinstance(m, WEIGHT_LAYERS)]
    if -layer > len(weight_positions):
        raise ValueError(
            f"layer {layer} is out of range: the network has {len(weight_positions)} weight layers"
        )
    position = weight_positions[layer]
    chosen = leaves[position]
    after = leaves[position + 1] if position + 1 < len(leaves) else None
    return chosen, after if isinstance(after, ACTIVATIONS) else chosen


def top_neurons(layer: nn.Module, k: int) -> torch.Tensor:
    """Indices of the k output units with the largest sum of |incoming weights|."""
    weight = layer.weight.detach()
    scores = weight.abs().reshape(weight.shape[0], -1).sum(dim=1)
    k = min(k, scores.numel())
    return torch.topk(scores, k).indices


@contextmanager
def capture_output(module: nn.Module) -> Iterator[dict[str, torch.Tensor]]:
    """Record a module's forward output; the hook is removed on exit."""
    store: dict[str, torch.Tensor] = {}

    def hook(_module: nn.Module, _inputs: object, output: torch.Tensor) -> None:
        store["out"] = output

    handle = module.register_forward_hook(hook)
    try:
        yield store
    finally:
        handle.remove()
