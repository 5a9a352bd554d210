"""The attack interface: poison the real pool, optionally react to networks.

An attack never sees which distiller calls it: it rewrites rows of the
`RealPool` (stamp + relabel) in `prepare`, and may re-stamp them later from
`on_network`. `trigger` is what evaluation stamps on the test set.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import nn

from ..config import ExperimentConfig, Section
from ..config_build import network_options
from ..data import RealData
from ..distill.pool import RealPool
from ..models import create_model
from ..triggers import Trigger


def attack_generator(config: ExperimentConfig, run_generator: torch.Generator) -> torch.Generator:
    """The random stream an attack draws from. Paired (`config.paired`, the default): a stream of
    its own, seeded from the run's seed under another name, so the distiller's draws stay those
    of the clean run of the same seed. Unpaired: the run's own generator, which the attack then
    moves on before the distiller draws (runs made before `paired` existed)."""
    if not config.paired:
        return run_generator
    digest = hashlib.sha256(f"ddbackdoor attack stream {config.seed}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)


def seeded_draw(generator: torch.Generator) -> int:
    """A seed for a network's initialisation, drawn from the attack's own stream."""
    return int(torch.randint(2**62, (1,), generator=generator))


def own_network(make: Callable[[], nn.Module], generator: torch.Generator) -> nn.Module:
    """A network initialised from the attack's stream; the global RNG is left as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seeded_draw(generator))
        return make()


def choose_poison(num_images: int, portion: float, generator: torch.Generator) -> torch.Tensor:
    """floor(portion * N) indices, uniformly at random over all classes."""
    count = math.floor(portion * num_images)
    return torch.randperm(num_images, generator=generator)[:count]


class PatchAttack:
    """Shared machinery: a poison set, its clean originals, and a patch trigger.

    A new attack subclasses this (or `ReoptimisedAttack`, or `NaiveAttack`), sets `name` and
    `description`, and, if it has settings of its own, declares them as `options`, a `config.Section`
    subclass: they become the config section `<name>.*` (read as `self.settings`), with their
    defaults shown by `ddbackdoor list` (docs/extending.md)."""

    name = "base"
    description = ""  # one line, for `ddbackdoor list` and `run --help`
    sections: tuple[str, ...] = ("poison",)  # the built-in config sections it reads
    options: type[Section] | None = None  # its own config section, `<name>.*`

    def __init__(self, config: ExperimentConfig, train: RealData, generator: torch.Generator):
        self.config = config
        self.train = train
        self.generator = generator
        self.trigger: Trigger = self.initial_trigger()
        self.poison_index = torch.empty(0, dtype=torch.long)
        self.originals = torch.empty(0)
        self.records: list[dict] = []  # one per trigger update, until `take_records` (history.jsonl)

    @property
    def settings(self) -> Section:
        """This attack's own config section (`options`), as the run's config resolved it."""
        if self.options is None:
            raise AttributeError(f"attack {self.name!r} declares no options")
        return getattr(self.config, self.name)

    def initial_trigger(self) -> Trigger:
        raise NotImplementedError

    def victims_architecture(self, device: torch.device) -> nn.Module:
        """A fresh network of the victims' architecture (a surrogate), from the attack's stream."""
        data, name = self.train, self.config.network
        options = network_options(self.config, name)

        def make() -> nn.Module:
            return create_model(name, data.channels, data.num_classes, data.image_size, **options).to(device)

        return own_network(make, self.generator)

    def prepare(self, pool: RealPool) -> None:
        """Stamp the poison set in place and relabel it to the target class."""
        poison = self.config.poison
        index = choose_poison(len(pool.labels), poison.portion, self.generator)
        self.poison_index = index.to(pool.images.device)
        self.originals = self.train.images[index].to(pool.images.device)
        pool.labels[self.poison_index] = poison.target
        pool.reindex()
        self.restamp(pool)

    def restamp(self, pool: RealPool) -> None:
        if self.poison_index.numel() == 0:
            return
        with torch.no_grad():
            stamped = self.trigger.to(pool.images.device).stamp(self.originals)
            pool.images[self.poison_index] = self.train.normalize(stamped)

    def state(self) -> tuple[dict[str, torch.Tensor], dict]:
        """What a checkpoint keeps: the current trigger (the poison set is redrawn from the seed)."""
        return {"trigger_pattern": self.trigger.pattern, "trigger_mask": self.trigger.mask}, {}

    def load_state(self, tensors: dict[str, torch.Tensor], meta: dict, pool: RealPool) -> None:
        """Restore the trigger after `prepare` and re-stamp the poison set with it."""
        device = self.trigger.pattern.device
        self.trigger = self.trigger.with_pattern(
            tensors["trigger_pattern"].to(device), tensors["trigger_mask"].to(device)
        )
        self.restamp(pool)

    def summary(self) -> dict:
        return {"poisoned": int(self.poison_index.numel())}

    def take_records(self) -> list[dict]:
        """What the attack did since the last call, one dict per event (history.jsonl)."""
        records, self.records = self.records, []
        return records


class ReoptimisedAttack(PatchAttack):
    """An attack whose trigger changes during distillation (TARGETPATCH, INVISIBLE): it keeps the
    pool to re-stamp after each update and counts its updates across checkpoints."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.pool: RealPool | None = None
        self.updates = 0

    def prepare(self, pool: RealPool) -> None:
        super().prepare(pool)
        self.pool = pool

    def restamp_pool(self) -> None:
        if self.pool is not None:
            self.restamp(self.pool)

    def state(self) -> tuple[dict[str, torch.Tensor], dict]:
        tensors, meta = super().state()
        return tensors, {**meta, "updates": self.updates}

    def load_state(self, tensors: dict[str, torch.Tensor], meta: dict, pool: RealPool) -> None:
        super().load_state(tensors, meta, pool)
        self.updates = int(meta["updates"])

    def summary(self) -> dict:
        return {**super().summary(), "trigger_updates": self.updates}


@contextmanager
def frozen_network(net: nn.Module) -> Iterator[None]:
    """The network in eval mode with no parameter gradients (a trigger update reads it, never
    trains it); both are put back afterwards."""
    was_training = net.training
    requires = [p.requires_grad for p in net.parameters()]
    net.eval()  # BN must not learn statistics from trigger images
    net.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in zip(net.parameters(), requires, strict=True):
            p.requires_grad_(flag)
        net.train(was_training)
