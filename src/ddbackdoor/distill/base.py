"""What every distiller shares: the real-data pool, the hook protocol, the result.

The distiller reads real images only through `RealPool`, whose tensors an
attack may rewrite between steps (re-stamping a re-optimised trigger); it
knows nothing else about attacks.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import torch
from torch import nn
from tqdm.auto import tqdm

from ..errors import DataError, NumericalError
from ..transfer import to_device

if TYPE_CHECKING:
    from ..config import ExperimentConfig, Section


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
        return self.images[pick(self.by_class[c], n, generator)]

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
    extras: dict[str, torch.Tensor] = field(default_factory=dict)  # saved as "extra.<name>"


class Hook(Protocol):
    """Called by a distiller; implement either method, or both."""

    def on_network(self, net: nn.Module, ctx: HookContext) -> None: ...

    def on_iteration(self, iteration: int, synthetic: SyntheticSet) -> None: ...


def call_hooks(hooks: list[Any], method: str, *args: Any) -> None:
    for hook in hooks:
        fn = getattr(hook, method, None)
        if fn is not None:
            fn(*args)


def real_init(pool: RealPool, c: int, ipc: int, generator: torch.Generator) -> torch.Tensor:
    """`ipc` real images of class c; a class with fewer (a finished set re-distilled after
    poisoning moved some of its images to the target) repeats its images to fill the slots."""
    count = pool.by_class[c].numel()
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
    for c, rows in enumerate(pool.by_class):
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


class VictimTrainer(Protocol):
    def __call__(
        self, net: nn.Module, synthetic: SyntheticSet, cfg: Any, generator: torch.Generator
    ) -> nn.Module: ...


class Distiller:
    """The iteration loop every distiller shares; subclasses fill in four methods.

    Splitting a run into `start` (fresh state) or `load_state` (from a
    checkpoint) plus one `step` per iteration is what makes runs resumable:
    everything a later iteration depends on lives in `state()`, apart from the
    random generators, which the caller saves and restores.
    """

    name = "base"
    description = ""  # one line, for `ddbackdoor list` and `run --help`
    sections: tuple[str, ...] = ()  # the built-in config sections it reads
    options: type[Section] | None = None  # a new distiller's own config section, `<name>.*`
    workdir: Path | None = None  # the run directory, when the distiller keeps files (MTT's experts)

    def __init__(
        self,
        config: ExperimentConfig,
        make_net: Callable[[], nn.Module],
        progress: bool = True,
        position: int = 0,
    ):
        self.config = config
        self.make_net = make_net
        self.progress = progress
        self.position = position
        self.losses: list[float] = []
        self.iteration = 0
        self.configure()

    @property
    def settings(self) -> Section:
        """This distiller's own config section (`options`), as the run's config resolved it."""
        if self.options is None:
            raise AttributeError(f"distiller {self.name!r} declares no options")
        return getattr(self.config, self.name)

    def configure(self) -> None:
        """Method-specific setup from `self.config`; raise ConfigError for combinations it cannot run."""

    # -- what a distiller implements -------------------------------------------------
    def start(self, pool: RealPool, generator: torch.Generator, hooks: Sequence = ()) -> None:
        """Create the initial synthetic set and optimisers. `hooks` see the networks a distiller
        trains before its first iteration (MTT's experts, with `mtt.trigger_net=experts`)."""
        raise NotImplementedError

    def step(self, iteration: int, pool: RealPool, hooks: list, generator: torch.Generator) -> torch.Tensor:
        """One iteration; returns its mean loss as a 0-d tensor (read once per iteration)."""
        raise NotImplementedError

    def synthetic(self) -> SyntheticSet:
        """The current synthetic set (detached; callers must not modify it)."""
        raise NotImplementedError

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """Every tensor a later iteration depends on (synthetic set, optimiser states)."""
        raise NotImplementedError

    def load_state_tensors(self, tensors: dict[str, torch.Tensor], device: torch.device) -> None:
        raise NotImplementedError

    def victim_trainer(self) -> VictimTrainer | None:
        """How a victim is meant to learn from this distiller's set; None = plain SGD.

        DSA/DM sets are evaluated with augmentation and DD sets by replaying
        the learned steps, as their authors do; evaluation asks, never guesses.
        """
        return None

    # -- the shared loop -----------------------------------------------------------------
    def state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        return self.state_tensors(), {"iteration": self.iteration, "losses": list(self.losses)}

    def load_state(
        self, tensors: dict[str, torch.Tensor], meta: dict[str, Any], device: torch.device
    ) -> None:
        self.load_state_tensors(tensors, device)
        self.iteration = int(meta["iteration"])
        self.losses = [float(x) for x in meta["losses"]]

    def run(
        self, pool: RealPool, hooks: list, generator: torch.Generator, resumed: bool = False
    ) -> SyntheticSet:
        """Iterations `self.iteration + 1 .. config.iterations`; `resumed` skips `start`."""
        if not resumed:
            self.start(pool, generator, hooks)
            self.iteration, self.losses = 0, []
        cfg = self.config
        bar = tqdm(
            range(self.iteration + 1, cfg.iterations + 1),
            desc=f"distil {self.name}/{cfg.attack}",
            disable=not self.progress,
            leave=False,
            position=self.position,
            initial=self.iteration,
            total=cfg.iterations,
        )
        for iteration in bar:
            loss = float(self.step(iteration, pool, hooks, generator))
            snapshot = self.record_iteration(iteration, loss)
            bar.set_postfix(loss=f"{loss:.3f}")
            call_hooks(hooks, "on_iteration", iteration, snapshot)
        return self.result()

    def record_iteration(self, iteration: int, loss: float, where: str = "") -> SyntheticSet:
        """Check and book an iteration's loss; the snapshot the `on_iteration` hooks get.
        `where` names the run in errors (a stack holds several)."""
        if not math.isfinite(loss):
            raise NumericalError(
                f"the {self.name} distillation loss{where} became {'NaN' if math.isnan(loss) else 'inf'} "
                f"at iteration {iteration}"
            )
        snapshot = self.synthetic()
        if not bool(torch.isfinite(snapshot.images).all()):
            raise NumericalError(f"the synthetic images{where} hold NaN or inf after iteration {iteration}")
        self.losses.append(loss)
        self.iteration = iteration
        snapshot.metadata["loss_history"] = list(self.losses)
        return snapshot

    def result(self) -> SyntheticSet:
        """A copy of the final synthetic set, with the loss history."""
        result = self.synthetic()
        return SyntheticSet(
            result.images.clone(),
            result.labels.clone(),
            None if result.lrs is None else result.lrs.clone(),
            {**result.metadata, "loss_history": list(self.losses)},
            {k: v.clone() for k, v in result.extras.items()},
        )


class ImageSGDDistiller(Distiller):
    """A distiller whose learned state is the images and one SGD-with-momentum optimiser (DC, DSA, DM)."""

    def image_settings(self) -> tuple[str, float, float]:
        """(init, lr_img, momentum_img) from the distiller's config section."""
        raise NotImplementedError

    def start(self, pool: RealPool, generator: torch.Generator, hooks: Sequence = ()) -> None:
        init, _, _ = self.image_settings()
        images, self.labels = init_synthetic(pool, self.config.ipc, init, generator)
        self._make_images(images)

    def _make_images(self, images: torch.Tensor) -> None:
        _, lr, momentum = self.image_settings()
        self.images = images.detach().clone().requires_grad_(True)
        self.optimizer_img = torch.optim.SGD([self.images], lr=lr, momentum=momentum)

    def synthetic(self) -> SyntheticSet:
        return SyntheticSet(self.images.detach(), self.labels)

    def state_tensors(self) -> dict[str, torch.Tensor]:
        return {
            "images": self.images.detach(),
            "labels": self.labels,
            **optimizer_tensors(self.optimizer_img, "optimizer_img"),
        }

    def load_state_tensors(self, tensors: dict[str, torch.Tensor], device: torch.device) -> None:
        self.labels = tensors["labels"].to(device)
        self._make_images(tensors["images"].to(device))
        load_optimizer_tensors(
            self.optimizer_img, {k: v.to(device) for k, v in tensors.items()}, "optimizer_img"
        )


def optimizer_tensors(optimizer: torch.optim.Optimizer, prefix: str) -> dict[str, torch.Tensor]:
    """An optimiser's per-parameter state as flat named tensors (safetensors holds no pickles)."""
    out: dict[str, torch.Tensor] = {}
    for index, state in optimizer.state_dict()["state"].items():
        for key, value in state.items():
            tensor = value if isinstance(value, torch.Tensor) else torch.tensor(value)
            out[f"{prefix}.{index}.{key}"] = tensor
    return out


def load_optimizer_tensors(
    optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], prefix: str
) -> None:
    """Inverse of `optimizer_tensors`: an optimiser with no saved state stays fresh."""
    full = optimizer.state_dict()
    state: dict[int, dict[str, Any]] = {}
    for name, tensor in tensors.items():
        head, _, key = name.rpartition(".")
        owner, _, index = head.rpartition(".")
        if owner == prefix:
            state.setdefault(int(index), {})[key] = tensor
    full["state"] = state
    optimizer.load_state_dict(full)
