"""A finished run's synthetic set as the training split: the "dark distillation" setting, where
the attacker receives only a distilled set (no real training image) and hands back a backdoored
one of the same size (`data.from_run`, docs/beyond-the-paper.md)."""

from __future__ import annotations

from pathlib import Path

import torch

from ..artifacts import load_tensors
from ..errors import DataError
from .realdata import RealData


def synthetic_as_train(run_dir: str | Path, like: RealData, dataset: str) -> RealData:
    """RUN/synthetic.safetensors in pixel space, clipped to [0, 1] (what an image can hold), as a
    `RealData` with `like`'s classes and normalisation; `like` is `dataset`'s training split,
    which the run must have distilled (only its shape and statistics are used)."""
    path = Path(run_dir) / "synthetic.safetensors"
    if not path.exists():
        raise DataError(f"data.from_run: {path} does not exist; pass the directory of a finished run")
    tensors, meta = load_tensors(path)
    if meta.get("dataset", dataset) != dataset:
        raise DataError(
            f"data.from_run: {run_dir} distilled {meta.get('dataset')!r}, not this run's dataset; "
            f"set dataset={meta.get('dataset')}"
        )
    images, labels = tensors["images"].float(), tensors["labels"].long()
    if tuple(images.shape[1:]) != tuple(like.images.shape[1:]):
        raise DataError(
            f"data.from_run: {run_dir} holds images of shape {tuple(images.shape[1:])}, this run "
            f"expects {tuple(like.images.shape[1:])}; use the same data.image_size"
        )
    if meta.get("space", "normalised") != "normalised":
        raise DataError(f"data.from_run: {path} holds images in an unknown space {meta.get('space')!r}")
    mean = torch.tensor(meta.get("mean", like.mean)).view(1, -1, 1, 1)
    std = torch.tensor(meta.get("std", like.std)).view(1, -1, 1, 1)
    pixels = (images * std + mean).clamp(0, 1)
    return RealData(pixels.contiguous(), labels, like.num_classes, like.mean, like.std, like.name)
