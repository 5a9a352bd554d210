"""`RealData`: a labelled image set held as tensors, plus the uint8 -> float conversion.

Everything downstream (distillation, attacks, evaluation) works on float32 NCHW
tensors in [0, 1] and normalises on the fly, so this is the one place that
knows the dataset's channel statistics.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

# Elements (C * H * W summed over a chunk) converted per step; bounds the
# float32 scratch memory of `images_to_tensor` to ~64 MiB beyond the output.
_CHUNK_ELEMENTS = 1 << 24


@dataclass
class RealData:
    """Images (float32 [N, C, H, W] in [0, 1]) with int64 labels and normalisation stats."""

    images: torch.Tensor
    labels: torch.Tensor
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    name: str

    def __post_init__(self) -> None:
        # Cheap shape checks only: catching a mismatch here beats a confusing
        # broadcast error deep inside training.
        if self.images.dim() != 4:
            raise ValueError(f"RealData.images must be [N, C, H, W], got shape {tuple(self.images.shape)}")
        if self.labels.dim() != 1 or self.labels.shape[0] != self.images.shape[0]:
            raise ValueError(
                f"RealData.labels must be [N] with N={self.images.shape[0]}, "
                f"got shape {tuple(self.labels.shape)}"
            )
        self.mean = tuple(float(m) for m in self.mean)
        self.std = tuple(float(s) for s in self.std)
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise ValueError(
                f"RealData mean/std need {self.channels} entries, got {len(self.mean)} and {len(self.std)}"
            )

    @property
    def channels(self) -> int:
        """Number of image channels (C)."""
        return int(self.images.shape[1])

    @property
    def image_size(self) -> int:
        """Image height (H); images are square after loading."""
        return int(self.images.shape[2])

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def _stats(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if x.dim() < 3 or x.shape[-3] != self.channels:
            raise ValueError(
                f"expected [..., {self.channels}, H, W] for dataset {self.name!r}, got shape {tuple(x.shape)}"
            )
        dtype = x.dtype if x.is_floating_point() else torch.float32
        mean = torch.tensor(self.mean, dtype=dtype, device=x.device).view(-1, 1, 1)
        std = torch.tensor(self.std, dtype=dtype, device=x.device).view(-1, 1, 1)
        return mean, std

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """(x - mean) / std per channel, on x's device; models see normalised inputs."""
        mean, std = self._stats(x)
        return (x - mean) / std

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        """Inverse of `normalize`: back to [0, 1] pixel space (not clamped)."""
        mean, std = self._stats(x)
        return x * std + mean

    def indices_by_class(self) -> list[torch.Tensor]:
        """One int64 index tensor per class (possibly empty), on the labels' device."""
        return [torch.nonzero(self.labels == c, as_tuple=False).flatten() for c in range(self.num_classes)]

    def subset(self, index: torch.Tensor) -> RealData:
        """The rows `index` (int64 or a bool mask), as a new RealData."""
        return RealData(
            self.images[index], self.labels[index], self.num_classes, self.mean, self.std, self.name
        )

    def to(self, device: torch.device | str) -> RealData:
        """A new RealData whose tensors live on `device`."""
        return RealData(
            images=self.images.to(device),
            labels=self.labels.to(device),
            num_classes=self.num_classes,
            mean=self.mean,
            std=self.std,
            name=self.name,
        )

    def clone(self) -> RealData:
        """A deep copy, so callers (e.g. poisoning) can modify images without aliasing."""
        return RealData(
            images=self.images.clone(),
            labels=self.labels.clone(),
            num_classes=self.num_classes,
            mean=self.mean,
            std=self.std,
            name=self.name,
        )


def check_data(data: RealData, split: str) -> None:
    """Reject data that would silently poison a run: wrong dtype, range, NaN, bad labels.

    Raises ValueError; the loader turns it into a one-line DataError naming the dataset.
    """
    images, labels = data.images, data.labels
    where = f"{data.name} {split} set"
    if images.shape[0] == 0:
        raise ValueError(f"the {where} is empty")
    if images.dtype != torch.float32:
        raise ValueError(f"the {where} images must be float32, got {images.dtype}")
    if not bool(torch.isfinite(images).all()):
        raise ValueError(f"the {where} holds NaN or inf pixel values")
    low, high = float(images.min()), float(images.max())
    if low < 0 or high > 1:
        raise ValueError(f"the {where} pixel values must lie in [0, 1], found [{low:.4g}, {high:.4g}]")
    if labels.dtype != torch.int64:
        raise ValueError(f"the {where} labels must be int64, got {labels.dtype}")
    if int(labels.min()) < 0 or int(labels.max()) >= data.num_classes:
        raise ValueError(
            f"the {where} labels must lie in 0..{data.num_classes - 1}, "
            f"found {int(labels.min())}..{int(labels.max())}"
        )


def images_to_tensor(images: np.ndarray, image_size: int) -> torch.Tensor:
    """uint8 [N, H, W, C] -> float32 [N, C, S, S] in [0, 1], resized in chunks to bound memory.

    Resizing uses bilinear interpolation with antialiasing (matters when
    shrinking, e.g. STL-10 96 -> 32) and is skipped when H == W == S.
    """
    if images.ndim != 4:
        raise ValueError(f"expected uint8 images [N, H, W, C], got shape {images.shape}")
    n, h, w, c = images.shape
    out = torch.empty((n, c, image_size, image_size), dtype=torch.float32)
    resize = (h, w) != (image_size, image_size)
    per_image = c * max(h * w, image_size * image_size)
    chunk = max(1, _CHUNK_ELEMENTS // per_image)
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        block = torch.tensor(images[start:stop]).permute(0, 3, 1, 2)  # copy: inputs may be read-only
        block = block.to(torch.float32).div_(255.0)
        if resize:
            block = F.interpolate(
                block, size=(image_size, image_size), mode="bilinear", antialias=True, align_corners=False
            ).clamp_(0.0, 1.0)
        out[start:stop] = block
    return out
