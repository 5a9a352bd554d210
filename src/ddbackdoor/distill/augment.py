"""Differentiable siamese augmentation (DSA; Zhao & Bilen, ICML 2021).

Gradient and distribution matching compare a real batch with a synthetic one;
augmenting both with the *same* random transform lets the synthetic images
learn from augmented real data without the comparison seeing two different
distortions. The authors get "the same" transform by re-seeding the global
RNG before each batch; here a transform is drawn once from a
`torch.Generator` into a small `Transform` (the sampled values) and then
applied to as many batches as needed. Every transform is differentiable
with respect to the images (affine_grid/grid_sample, gather, masks).

As in the authors' 'S' mode, each draw picks one element of the strategy
string (`color` = brightness, then saturation, then contrast) uniformly at
random. A siamese draw (`n=1`) shares one value among all images of every
batch it is applied to; a per-image draw (`n=batch`) is what victims and the
DSA inner loop train with.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..errors import ConfigError

DEFAULT_STRATEGY = "color_crop_cutout_flip_scale_rotate"


@dataclass(frozen=True)
class Magnitudes:
    """The authors' `ParamDiffAug` defaults."""

    flip: float = 0.5  # probability of a horizontal flip
    scale: float = 1.2  # per-axis factor uniform in [1/scale, scale]
    rotate: float = 15.0  # degrees, uniform in [-rotate, rotate]
    crop: float = 0.125  # largest shift, as a fraction of the side (zero fill)
    cutout: float = 0.5  # side of the zeroed square, as a fraction of the side
    brightness: float = 1.0  # added offset uniform in [-brightness/2, brightness/2]
    saturation: float = 2.0  # factor uniform in [0, saturation] around the channel mean
    contrast: float = 0.5  # factor uniform in [contrast, contrast + 1] around the image mean


GROUPS: dict[str, tuple[str, ...]] = {
    "color": ("brightness", "saturation", "contrast"),
    "crop": ("crop",),
    "cutout": ("cutout",),
    "flip": ("flip",),
    "scale": ("scale",),
    "rotate": ("rotate",),
}


def parse_strategy(strategy: str) -> tuple[str, ...]:
    """The strategy's groups; '' or 'none' = no augmentation. Unknown names are a ConfigError."""
    if strategy.lower() in ("", "none"):
        return ()
    groups = tuple(strategy.split("_"))
    for group in groups:
        if group not in GROUPS:
            raise ConfigError(
                f"unknown augmentation {group!r} in dsa.strategy {strategy!r}; "
                f"accepted: '_'-joined names from {', '.join(GROUPS)} (or none)"
            )
    return groups


# -- sampling: (n, (height, width), magnitudes, generator) -> one row of values per image ----------

Sampler = Callable[[int, tuple[int, int], Magnitudes, torch.Generator], torch.Tensor]


def _uniform(n: int, generator: torch.Generator) -> torch.Tensor:
    return torch.rand(n, generator=generator, device=generator.device)


def _sample_flip(n: int, size: tuple[int, int], m: Magnitudes, g: torch.Generator) -> torch.Tensor:
    return _uniform(n, g) < m.flip


def _sample_scale(n: int, size: tuple[int, int], m: Magnitudes, g: torch.Generator) -> torch.Tensor:
    low = 1.0 / m.scale
    sx = _uniform(n, g) * (m.scale - low) + low
    sy = _uniform(n, g) * (m.scale - low) + low
    theta = torch.zeros(n, 2, 3, device=g.device)
    theta[:, 0, 0], theta[:, 1, 1] = sx, sy
    return theta


def _sample_rotate(n: int, size: tuple[int, int], m: Magnitudes, g: torch.Generator) -> torch.Tensor:
    angle = (_uniform(n, g) - 0.5) * 2 * m.rotate / 180 * math.pi
    cos, sin = angle.cos(), angle.sin()
    return torch.stack([torch.stack([cos, -sin, 0 * cos], 1), torch.stack([sin, cos, 0 * cos], 1)], 1)


def _sample_crop(n: int, size: tuple[int, int], m: Magnitudes, g: torch.Generator) -> torch.Tensor:
    """Shifts (rows, cols): output pixel (i, j) reads input (i + dy, j + dx)."""
    shifts = [int(side * m.crop + 0.5) for side in size]
    return torch.stack([torch.randint(-s, s + 1, (n,), generator=g, device=g.device) for s in shifts], dim=1)


def _sample_cutout(n: int, size: tuple[int, int], m: Magnitudes, g: torch.Generator) -> torch.Tensor:
    """Zeroed box [row0, row1) x [col0, col1); the centre may sit on any pixel, so boxes clip."""
    starts = []
    for side in size:
        box = int(side * m.cutout + 0.5)
        centre = torch.randint(0, side + (1 - box % 2), (n,), generator=g, device=g.device)
        starts += [centre - box // 2, centre - box // 2 + box]
    return torch.stack(starts, dim=1)


def _sample_brightness(n: int, size: tuple[int, int], m: Magnitudes, g: torch.Generator) -> torch.Tensor:
    return (_uniform(n, g) - 0.5) * m.brightness


def _sample_saturation(n: int, size: tuple[int, int], m: Magnitudes, g: torch.Generator) -> torch.Tensor:
    return _uniform(n, g) * m.saturation


def _sample_contrast(n: int, size: tuple[int, int], m: Magnitudes, g: torch.Generator) -> torch.Tensor:
    return _uniform(n, g) + m.contrast


# -- applying: (images [B, C, H, W], values with leading dim 1 or B) -> images ---------------------


def _per_image(value: torch.Tensor) -> torch.Tensor:
    return value.view(-1, 1, 1, 1)


def _apply_flip(x: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
    return torch.where(_per_image(flip), x.flip(3), x)


def _apply_affine(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    theta = theta.to(x.dtype).expand(x.shape[0], 2, 3)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, align_corners=False)


def _apply_crop(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    b, c, h, w = x.shape
    shift = shift.expand(b, 2)
    rows = torch.arange(h, device=x.device) + shift[:, :1]  # [B, H]
    cols = torch.arange(w, device=x.device) + shift[:, 1:]  # [B, W]
    inside = ((rows >= 0) & (rows < h))[:, None, :, None] & ((cols >= 0) & (cols < w))[:, None, None, :]
    rows = rows.clamp(0, h - 1)[:, None, :, None].expand(b, c, h, w)
    cols = cols.clamp(0, w - 1)[:, None, None, :].expand(b, c, h, w)
    return x.gather(2, rows).gather(3, cols) * inside


def _apply_cutout(x: torch.Tensor, box: torch.Tensor) -> torch.Tensor:
    h, w = x.shape[-2:]
    rows = torch.arange(h, device=x.device)
    cols = torch.arange(w, device=x.device)
    in_rows = (rows >= box[:, :1]) & (rows < box[:, 1:2])  # [n, H]
    in_cols = (cols >= box[:, 2:3]) & (cols < box[:, 3:4])  # [n, W]
    keep = ~(in_rows[:, :, None] & in_cols[:, None, :])
    return x * keep[:, None].to(x.dtype)


def _apply_brightness(x: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
    return x + _per_image(offset).to(x.dtype)


def _apply_saturation(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    mean = x.mean(dim=1, keepdim=True)
    return (x - mean) * _per_image(factor).to(x.dtype) + mean


def _apply_contrast(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * _per_image(factor).to(x.dtype) + mean


OPS: dict[str, tuple[Sampler, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]]] = {
    "flip": (_sample_flip, _apply_flip),
    "scale": (_sample_scale, _apply_affine),
    "rotate": (_sample_rotate, _apply_affine),
    "crop": (_sample_crop, _apply_crop),
    "cutout": (_sample_cutout, _apply_cutout),
    "brightness": (_sample_brightness, _apply_brightness),
    "saturation": (_sample_saturation, _apply_saturation),
    "contrast": (_sample_contrast, _apply_contrast),
}


@dataclass(frozen=True)
class Op:
    """One primitive with its sampled values: one row per image, or one row shared by all."""

    name: str
    value: torch.Tensor


@dataclass(frozen=True)
class Transform:
    """One draw of DSA; applying it twice gives the same transform twice (the siamese part)."""

    ops: tuple[Op, ...] = ()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        for op in self.ops:
            rows = op.value.shape[0]
            if rows not in (1, x.shape[0]):
                raise ValueError(f"a transform drawn for {rows} images cannot augment {x.shape[0]}")
            x = OPS[op.name][1](x, op.value.to(x.device))
        return x


class DiffAugment:
    """Draws DSA transforms from a generator; `__call__` augments a batch image by image."""

    def __init__(self, strategy: str = DEFAULT_STRATEGY, magnitudes: Magnitudes | None = None):
        self.strategy = strategy
        self.groups = parse_strategy(strategy)
        self.magnitudes = magnitudes or Magnitudes()

    def sample(self, generator: torch.Generator, size: tuple[int, int], n: int = 1) -> Transform:
        """One group chosen at random, its values drawn for n images (n=1: siamese, shared)."""
        if not self.groups:
            return Transform()
        pick = int(torch.randint(len(self.groups), (1,), generator=generator, device=generator.device))
        size = (int(size[0]), int(size[1]))
        return Transform(
            tuple(
                Op(name, OPS[name][0](n, size, self.magnitudes, generator))
                for name in GROUPS[self.groups[pick]]
            )
        )

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Per-image random values (the authors' non-siamese mode), for training on a set."""
        return self.sample(generator, x.shape[-2:], x.shape[0])(x)
