"""What every section shares: the scales, the data and the `Bench` handle."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from ..allocator import retained_heap
from ..data import RealData, load_dataset
from ..distill.pool import RealPool
from ..models import create_model
from ..resolve import build_config


@dataclass(frozen=True)
class Scale:
    """How big each section is; `quick` is for tests, `cpu`/`cuda` for real measurements."""

    repeats: int
    width: int  # matching (a) and victims (c)
    batch_real: int
    victim_epochs: int
    victim_width: int
    dc_width: int  # (d): the authors' ConvNet is width 128
    dc_batch_real: int
    dc_outer: int | None  # None: the authors' full outer loop
    dc_inner: int | None  # None: the authors' inner loop
    dc_repeats: int
    dd_width: int
    dd_steps: int
    dd_epochs: int
    dd_batch_real: int
    trigger_steps: int
    test_images: int | None  # victims are scored on this many test images (None: all)


SCALES: dict[str, Scale] = {
    "quick": Scale(1, 8, 8, 2, 4, 8, 8, 2, 1, 1, 8, 2, 1, 32, 20, 100),
    "cpu": Scale(3, 128, 256, 20, 32, 128, 256, 2, None, 2, 128, 10, 3, 1024, 200, None),
    "cuda": Scale(5, 128, 256, 50, 128, 128, 256, None, None, 3, 128, 10, 3, 1024, 200, None),
}


# -- data ----------------------------------------------------------------------------------------------
def random_cifar_shaped(seed: int, per_class: int = 500) -> tuple[RealData, RealData]:
    """3x32x32, 10 classes, uniform pixels: the shape and cost of CIFAR-10 with no download."""
    gen = torch.Generator().manual_seed(seed)
    mean, std = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)

    def split(n: int) -> RealData:
        labels = torch.arange(10).repeat_interleave(n)
        return RealData(
            torch.rand(labels.numel(), 3, 32, 32, generator=gen), labels, 10, mean, std, "cifar10"
        )

    return split(per_class), split(per_class // 5)


DATA: dict[str, Callable[[int], tuple[RealData, RealData]]] = {
    "fashion-mnist-mini": lambda seed: load_dataset("fashion-mnist-mini", None, 32, False),
    "cifar10-shaped": random_cifar_shaped,
}


@dataclass
class Bench:
    device: torch.device
    scale: Scale
    train: RealData
    test: RealData
    seed: int
    reproducible: bool = False  # time the paths as reproducible runs run them (pinned kernels)

    @property
    def dataset(self) -> str:
        return "cifar10" if self.train.name == "cifar10" else "fashion-mnist-mini"

    def pool(self) -> RealPool:
        images = self.train.normalize(self.train.images).to(self.device)
        return RealPool(images, self.train.labels.clone().to(self.device), self.train.num_classes)

    def config(self, *overrides: str):
        pinned = f"reproducible={str(self.reproducible).lower()}"
        return build_config(
            {"profile": "paper", "dataset": self.dataset}, [f"seed={self.seed}", pinned, *overrides]
        )

    def net(self, width: int, **options) -> nn.Module:
        torch.manual_seed(self.seed)
        shape = (self.train.channels, self.train.num_classes, self.train.image_size)
        return create_model("convnet", *shape, width=width, **options).to(self.device)

    def generator(self) -> torch.Generator:
        return torch.Generator().manual_seed(self.seed)


# the authors' arithmetic, eager, one class after another (run without the retained heap)
STRAIGHTFORWARD = ["dc.matching=loop", "dc.compile=false"]


def fast_dc_options(device: torch.device, reproducible: bool = False) -> list[str]:
    """The fastest measured path on this device (docs/speed.md): batched matching on CUDA,
    compiled plain passes on a CPU, where batching loses (not in reproducible mode, which
    compiles nothing)."""
    if device.type == "cuda":
        return ["dc.matching=batched", "dc.compile=false"]
    return ["dc.matching=loop", f"dc.compile={str(not reproducible).lower()}"]


def in_retained_heap(fn: Callable[[], object]) -> Callable[[], object]:
    """`fn` as the fast path runs it: with freed CPU memory kept in the heap (`retain_freed_memory`)."""

    def call() -> object:
        with retained_heap():
            return fn()

    return call
