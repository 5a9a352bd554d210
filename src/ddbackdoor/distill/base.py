"""What every distiller shares: the real-data pool, the hook protocol, the result.

The distiller reads real images only through `RealPool`, whose tensors an
attack may rewrite between steps (re-stamping a re-optimised trigger); it
knows nothing else about attacks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import nn


@dataclass
class RealPool:
    """Normalised real training images on the compute device, with a per-class index."""

    images: torch.Tensor  # [N, C, H, W], normalised
    labels: torch.Tensor  # [N]
    num_classes: int

    def __post_init__(self) -> None:
        self.reindex()

    def reindex(self) -> None:
        """Rebuild the per-class index; call after relabelling."""
        self.by_class = [torch.nonzero(self.labels == c).flatten() for c in range(self.num_classes)]

    def sample(self, c: int, n: int, generator: torch.Generator) -> torch.Tensor:
        """Up to n random images of class c (without replacement)."""
        index = self.by_class[c]
        perm = torch.randperm(index.numel(), generator=generator)[:n]
        return self.images[index[perm.to(index.device)]]

    @property
    def channels(self) -> int:
        return self.images.shape[1]

    @property
    def image_size(self) -> int:
        return self.images.shape[-1]


@dataclass
class HookContext:
    iteration: int
    outer_step: int = 0
    is_last_outer: bool = False


@dataclass
class SyntheticSet:
    """What the attacker hands the victim: images (normalised), hard labels, extras."""

    images: torch.Tensor
    labels: torch.Tensor
    lrs: torch.Tensor | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


class Hook(Protocol):
    """Called by a distiller; implement either method, or both."""

    def on_network(self, net: nn.Module, ctx: HookContext) -> None: ...

    def on_iteration(self, iteration: int, synthetic: SyntheticSet) -> None: ...


def call_hooks(hooks: list[Any], method: str, *args: Any) -> None:
    for hook in hooks:
        fn = getattr(hook, method, None)
        if fn is not None:
            fn(*args)
