"""What every distiller shares: the hook protocol, the result, the iteration loop.

The distiller reads real images only through `RealPool` (distill/pool.py), whose tensors an
attack may rewrite between steps (re-stamping a re-optimised trigger); it knows nothing else
about attacks.
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

from ..errors import NumericalError
from .pool import RealPool, init_synthetic

if TYPE_CHECKING:
    from ..config import ExperimentConfig, Section


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
    # a distiller of a received finished set that asks for that set's own distiller (rematch);
    # `make_distiller` (ddbackdoor.run_setup) binds it as `received`
    reads_received = False
    received: Distiller | None = None

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
