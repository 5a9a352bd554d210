"""The real images a distiller reads (`RealPool`: normalised, on the device, indexed by class,
rewritten in place by an attack), and the synthetic set's start drawn from them."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..errors import DataError
from ..transfer import to_device


def pick(index: torch.Tensor, n: int, generator: torch.Generator) -> torch.Tensor:
    """Up to n entries of `index`, at random, without replacement."""
    perm = torch.randperm(index.numel(), generator=generator)[:n]
    return index[to_device(perm, index.device)]


@dataclass
class RealPool:
    """Normalised real training images on the compute device, with a per-class index."""

    images: torch.Tensor  # [N, C, H, W], normalised
    labels: torch.Tensor  # [N]
    num_classes: int
    # an attack's choices (attacks/seeded.py), empty otherwise: images (normalised) that class c's
    # first synthetic images start as, whatever the init; and, per class, the index split into rows
    # that make up a fixed share of every batch the distiller draws and the rest (`mix`)
    seeds: dict[int, torch.Tensor] = field(default_factory=dict)
    mixes: dict[int, tuple[torch.Tensor, torch.Tensor, float]] = field(default_factory=dict)
    # a start from real images drawn as the clean run of the same seed draws it (`paired_start`);
    # the per-class index as it was before any attack relabelled rows is what it draws against
    paired: bool = False
    # images (normalised), labels and a weight that a finished-set attack, which has no real image
    # to poison, asks the distiller to match besides the pool (attacks/poisoned_distillation.py;
    # read by distill=rematch)
    backdoor: tuple[torch.Tensor, torch.Tensor, float] | None = None
    # the normalised values of pixels 0 and 1, each [1, C, 1, 1] (what keeps an image valid)
    pixel_range: tuple[torch.Tensor, torch.Tensor] | None = None
    # rows that never start a synthetic image (attacks/boundary.py: InkDrop's and SNEAKDOOR's
    # releases start the target class from its clean images); empty for every other attack
    start_excluded: torch.Tensor = field(default_factory=lambda: torch.empty(0, dtype=torch.long))

    def __post_init__(self) -> None:
        self.reindex()
        self.clean_by_class = list(self.by_class)

    @property
    def relabelled(self) -> bool:
        """Whether an attack has moved rows between classes since the pool was made."""
        return any(
            not torch.equal(now, before)
            for now, before in zip(self.by_class, self.clean_by_class, strict=True)
        )

    def reindex(self) -> None:
        """Rebuild the per-class index; call after relabelling."""
        self.by_class = [torch.nonzero(self.labels == c).flatten() for c in range(self.num_classes)]

    def sample(self, c: int, n: int, generator: torch.Generator, mix: bool = True) -> torch.Tensor:
        """Up to n random images of class c (without replacement). A class in `mixes` draws its
        share of them from the mix's rows and the rest from its other rows, unless `mix` is off
        (the synthetic set's start: seeds decide it)."""
        if mix and c in self.mixes:
            inside, outside = self.mixed_draw(c, n, generator)
            return self.images[torch.cat([outside, inside])]
        return self.images[pick(self.start_rows(c) if not mix else self.by_class[c], n, generator)]

    def start_rows(self, c: int) -> torch.Tensor:
        """Class c's rows that a synthetic image may start as (`start_excluded` left out)."""
        rows = self.by_class[c]
        if self.start_excluded.numel() == 0:
            return rows
        return rows[~torch.isin(rows, self.start_excluded.to(rows.device))]

    def mixed_draw(self, c: int, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """The rows of one draw of a mixed class: those from the mix's rows, then the others."""
        inside, outside, share = self.mixes[c]
        count = round(n * share)
        chosen = pick(inside, count, generator)
        return chosen, pick(outside, n - count, generator)

    def mix(self, c: int, rows: torch.Tensor, share: float) -> None:
        """From now on `share` of every draw of class c comes from those of its rows in `rows`."""
        index = self.by_class[c]
        chosen = torch.isin(index, rows.to(index.device))
        self.mixes[c] = (index[chosen], index[~chosen], share)

    @property
    def channels(self) -> int:
        return self.images.shape[1]

    @property
    def image_size(self) -> int:
        return self.images.shape[-1]


def real_init(pool: RealPool, c: int, ipc: int, generator: torch.Generator) -> torch.Tensor:
    """`ipc` real images of class c; a class with fewer (a finished set re-distilled after
    poisoning moved some of its images to the target) repeats its images to fill the slots."""
    count = pool.start_rows(c).numel()
    if count == 0:
        raise DataError(f"init=real: class {c} has no real image; use init=noise")
    if count >= ipc:
        return pool.sample(c, ipc, generator, mix=False)
    images = pool.sample(c, count, generator, mix=False)
    repeat = torch.randint(count, (ipc - count,), generator=generator).to(images.device)
    return torch.cat([images, images[repeat]])


# the fractional part of row x this, a fixed spread over [0, 1) that makes a row's place in its
# class a fraction without drawing a random number (golden-ratio sequence)
_SPREAD = 0.6180339887498949


def paired_start(pool: RealPool, ipc: int, generator: torch.Generator) -> torch.Tensor:
    """`ipc` real images of every class, drawn as the clean run of the same seed draws them.

    One permutation of each class's clean rows, class after class: the random numbers
    `real_init` takes from a clean pool (which draws with `real_init` itself, so a clean run
    starts as it always did, even where a class has fewer rows than slots). A class then keeps
    its own rows in that order, less those an attack took away, and each row an attack moved in
    is inserted at a uniform place, the fraction of the way along its clean class's permutation
    it stood: the order stays a uniform permutation of the class as it is now, so a class keeps
    the clean run's starting images but for those the attack took away (its next rows replace
    them), and a moved row starts as often as any of the class's (tests/test_paired.py).
    """
    orders = [rows.cpu()[torch.randperm(rows.numel(), generator=generator)] for rows in pool.clean_by_class]
    fraction = torch.empty(len(pool.labels), dtype=torch.float64)
    clean_class = torch.empty(len(pool.labels), dtype=torch.long)
    for c, placed in enumerate(orders):
        spread = (placed.double() * _SPREAD) % 1.0
        fraction[placed] = (torch.arange(placed.numel(), dtype=torch.float64) + spread) / max(
            placed.numel(), 1
        )
        clean_class[placed] = c
    starts = []
    for c in range(pool.num_classes):
        rows = pool.start_rows(c)
        if rows.numel() == 0:
            raise DataError(f"init=real: class {c} has no real image; use init=noise")
        here = rows.cpu()
        order = orders[c][torch.isin(orders[c], here)].tolist()
        for row in here[clean_class[here] != c].tolist():
            order.insert(int(fraction[row] * (len(order) + 1)), row)
        first = to_device(torch.tensor(order[:ipc], dtype=torch.long), rows.device)
        if first.numel() < ipc:  # fewer rows than slots: repeat them, as `real_init` does
            repeat = torch.randint(first.numel(), (ipc - first.numel(),), generator=generator)
            first = torch.cat([first, first[to_device(repeat, first.device)]])
        starts.append(pool.images[first])
    return torch.cat(starts)


def init_synthetic(
    pool: RealPool, ipc: int, init: str, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Synthetic images (normalised space) and their fixed hard labels, class-major; the pool's
    `seeds` then replace the first images of their classes."""
    c, h, w = pool.images.shape[1:]
    labels = torch.arange(pool.num_classes).repeat_interleave(ipc)
    if init == "real" and pool.paired and pool.relabelled:
        images = paired_start(pool, ipc, generator)
    elif init == "real":
        images = torch.cat([real_init(pool, k, ipc, generator) for k in range(pool.num_classes)]).clone()
    else:
        images = torch.randn(labels.numel(), c, h, w, generator=generator)
    images = images.to(pool.images.device)
    for k, seeds in pool.seeds.items():  # resolve.py keeps them within ipc
        images[k * ipc : k * ipc + len(seeds)] = seeds
    return images, labels.to(pool.images.device)
