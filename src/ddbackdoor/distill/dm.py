"""DM: dataset condensation with distribution matching (Zhao & Bilen, WACV 2023).

Each iteration draws a fresh, never trained network and, per class, moves the
mean embedding of the synthetic images towards that of a real batch, both
augmented with the same DSA transform (one draw per class). The loss is the
sum over classes of the squared distance of the two means; the images take
one SGD step. Defaults are the authors' `main_DM.py`: init from real images,
lr_img 1.0 with momentum 0.5, real batch 256, 20000 iterations; victims
train with DSA augmentation (1000 epochs in the `paper` profile).

The embedding is the input of the network's last Linear layer, i.e. the
network without its classifier, which is what the authors' `embed` returns
for each of their architectures. For the NDSS ConvNet (`net.hidden=192`) that
is the ReLU output of the hidden layer, the very layer DOORPING excites;
`net.hidden=0` gives the authors' ConvNet and its flattened conv features.

BatchNorm as theirs: the network stays in train mode and every class's real
batches go through it together (one forward for all real images, one for all
synthetic ones), so BN sees several classes. Without BN, this one forward
equals the authors' per-class forwards.

DOORPING needs a network to re-optimise its trigger, and DM trains none.
`dm.trigger_net` decides what `on_network` receives every
`dm.trigger_every` iterations: `random`, the iteration's own random network;
`trained`, a fresh network trained on the current synthetic set for
`dm.trigger_epochs` epochs exactly as a victim is (same optimiser, schedule
and augmentation, fewer epochs), a stand-in for the model the attack targets.
`random` is the default: on the quick profile both gave the same ASR within
victim-to-victim spread, and `trained` cost about 1.6x the CPU time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import nn

from ..errors import ConfigError
from .augment import DiffAugment
from .base import HookContext, ImageSGDDistiller, VictimTrainer, call_hooks
from .dsa import augmented_victim_trainer
from .pool import RealPool


def classifier_layer(net: nn.Module) -> nn.Linear:
    """The network's last Linear layer: everything before it is the embedding."""
    linears = [m for m in net.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ConfigError(
            f"distill=dm needs a network ending in a Linear classifier; {type(net).__name__} has none"
        )
    return linears[-1]


@contextmanager
def capture_input(module: nn.Module) -> Iterator[dict[str, torch.Tensor]]:
    """Record a module's forward input; the hook is removed on exit."""
    store: dict[str, torch.Tensor] = {}

    def hook(_module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        store["in"] = inputs[0]

    handle = module.register_forward_pre_hook(hook)
    try:
        yield store
    finally:
        handle.remove()


def embed(net: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """[B, D] embeddings: the input of the last Linear layer."""
    with capture_input(classifier_layer(net)) as store:
        net(images)
    return store["in"].flatten(1)


def row_mean(embeddings: torch.Tensor) -> torch.Tensor:
    return embeddings.mean(0)


def distribution_loss(
    net: nn.Module,
    reals: list[torch.Tensor],
    syns: list[torch.Tensor],
    real_mean: Callable[[torch.Tensor], torch.Tensor] = row_mean,
) -> torch.Tensor:
    """Sum over classes of ||real_mean(embedding(real_c)) - mean embedding(syn_c)||^2 (real side
    detached); `real_mean` is where a robust estimate replaces the mean (distill/rdm_dc.py)."""
    with torch.no_grad():
        real_emb = embed(net, torch.cat(reals))
    syn_emb = embed(net, torch.cat(syns))
    real_means = torch.stack([real_mean(e) for e in real_emb.split([r.shape[0] for r in reals])])
    syn_means = torch.stack([e.mean(0) for e in syn_emb.split([s.shape[0] for s in syns])])
    return ((real_means - syn_means) ** 2).sum()


class DMDistiller(ImageSGDDistiller):
    """Distribution matching on the shared `Distiller` loop; see the module docstring."""

    name = "dm"
    description = "DM (Zhao & Bilen 2023): distribution matching of embeddings under random networks"
    sections = ("dm",)

    def configure(self) -> None:
        config = self.config
        self.augment = DiffAugment(config.dsa.strategy)
        self.trigger_nets: dict[str, Callable[[nn.Module, torch.Generator], nn.Module]] = {
            "random": lambda net, generator: net,
            "trained": lambda net, generator: self.trained_network(generator),
        }

    def image_settings(self) -> tuple[str, float, float]:
        return self.config.dm.init, self.config.dm.lr_img, self.config.dm.momentum_img

    def victim_trainer(self) -> VictimTrainer:
        return augmented_victim_trainer(self.augment)

    def class_batches(
        self, pool: RealPool, generator: torch.Generator
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Per class: a real batch and the class's synthetic images, under one shared transform."""
        ipc, reals, syns = self.config.ipc, [], []
        for c in range(pool.num_classes):
            real = pool.sample(c, self.config.dm.batch_real, generator)
            transform = self.augment.sample(generator, real.shape[-2:])
            reals.append(transform(real))
            syns.append(transform(self.images[c * ipc : (c + 1) * ipc]))
        return reals, syns

    def step(self, iteration: int, pool: RealPool, hooks: list, generator: torch.Generator) -> torch.Tensor:
        net = self.make_net()
        net.train()
        net.requires_grad_(False)
        reals, syns = self.class_batches(pool, generator)
        loss = distribution_loss(net, reals, syns, self.real_mean)
        self.optimizer_img.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer_img.step()
        net.requires_grad_(True)  # hooks get a network in its usual state, as DC hands them
        if iteration % self.config.dm.trigger_every == 0:
            chosen = self.trigger_nets[self.config.dm.trigger_net](net, generator)
            call_hooks(hooks, "on_network", chosen, HookContext(iteration))
        return loss.detach() / pool.num_classes

    def real_mean(self, embeddings: torch.Tensor) -> torch.Tensor:
        """A class's real embeddings [B, D] -> the point its synthetic mean is pulled to."""
        return row_mean(embeddings)

    def trained_network(self, generator: torch.Generator) -> nn.Module:
        """A fresh network trained on the current synthetic set like a victim, for dm.trigger_epochs."""
        net = self.make_net()
        short = self.config.eval.model_copy(update={"epochs": self.config.dm.trigger_epochs})
        self.victim_trainer()(net, self.synthetic(), short, generator)
        return net
