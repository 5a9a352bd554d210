"""IDM: improved distribution matching (Zhao, Li, Qin, Yu; CVPR 2023), as its release runs it.

DM with three changes (read in the authors' IDM_cifar10.py and command.txt, written anew here):

- Partitioning: each synthetic image holds `factor` x `factor` smaller images (a mosaic of real
  images of its class at the start); every use of the set, matching and victims alike, cuts each
  image into its tiles and upsamples each tile back to full size, so IPC k trains as k * factor^2
  images (`expand`).
- Networks that learn: a queue of up to `net_num` networks, a fresh one joining every `net_every`
  iterations (the oldest leaving), each with its own SGD; after every image update `train_nets` of
  them, drawn at random, take `train_steps` SGD steps on real batches of all classes. The matching
  network is drawn from the queue, so the embeddings come from partly trained networks, not only
  from fresh ones as in DM.
- Class-aware regularisation: class c's loss adds ce_weight x acc x CE(net(tiles of c), c), acc being
  the matching network's running training accuracy in percent (0-100, as their meter reports it;
  the meters start over every `meter_every` iterations, their evaluation interval).

The embedding is DM's (ddbackdoor.distill.dm: the input of the last Linear layer), and the same
DSA transform goes to a class's real batch and its tiles. As in the release, the images take one
SGD step per class (momentum 0.5, lr 0.2), not one per iteration. Defaults are the release's
command for CIFAR-10 at IPC 10; no official command exists for Fashion-MNIST or MNIST.

DOORPING and the other network-reading attacks receive the matching network every
`idm.trigger_every` iterations: a network trained on the (poisoned) real pool.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from .augment import DiffAugment
from .base import (
    HookContext,
    ImageSGDDistiller,
    SyntheticSet,
    VictimTrainer,
    call_hooks,
    load_optimizer_tensors,
    optimizer_tensors,
)
from .dm import capture_input, classifier_layer
from .pool import RealPool, init_synthetic


def expand(images: torch.Tensor, labels: torch.Tensor, factor: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each image's factor x factor tiles, each upsampled (bilinear) to the image's size: tile-major
    order (every image's first tile, then every image's second...), labels repeated to match."""
    if factor == 1:
        return images, labels
    size = images.shape[-1]
    tile = size // factor
    tiles = [
        images[..., i * tile : (i + 1) * tile, j * tile : (j + 1) * tile]
        for j in range(factor)
        for i in range(factor)
    ]
    grown = [F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False) for t in tiles]
    return torch.cat(grown), labels.repeat(factor * factor)


def mosaic(images: torch.Tensor, factor: int) -> torch.Tensor:
    """Groups of factor^2 consecutive images, each shrunk (bilinear) into one tile of one image,
    in `expand`'s tile order."""
    n, c, size, _ = images.shape
    tile = size // factor
    small = F.interpolate(images, size=(tile, tile), mode="bilinear", align_corners=False)
    small = small.view(n // factor**2, factor**2, c, tile, tile)
    out = images.new_zeros(n // factor**2, c, size, size)
    for k in range(factor**2):
        j, i = divmod(k, factor)
        out[..., i * tile : (i + 1) * tile, j * tile : (j + 1) * tile] = small[:, k]
    return out


def expanded_victim_trainer(augment: DiffAugment, factor: int) -> VictimTrainer:
    """Victims train on the expanded set with per-image DSA, as the release evaluates IDM sets."""
    from ..evaluate import train_victim  # evaluate imports this package: bind it at call time

    def train(net: nn.Module, synthetic: SyntheticSet, cfg, generator: torch.Generator) -> nn.Module:
        images, labels = expand(synthetic.images.detach(), synthetic.labels, factor)
        grown = SyntheticSet(images, labels, synthetic.lrs, synthetic.metadata, synthetic.extras)
        return partial(train_victim, augment=augment)(net, grown, cfg, generator)

    return train


class QueuedNet:
    """A network of IDM's queue: its own SGD, and its training accuracy since the meter's reset."""

    def __init__(self, net: nn.Module, lr: float):
        self.net = net
        self.optimizer = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
        self.meter = torch.zeros(2, dtype=torch.float64)  # correct, seen

    def accuracy_percent(self) -> float:
        return 0.0 if self.meter[1] == 0 else float(100 * self.meter[0] / self.meter[1])


class IDMDistiller(ImageSGDDistiller):
    """Improved distribution matching; see the module docstring."""

    name = "idm"
    description = "IDM (Zhao et al. 2023): DM with partitioned images, a queue of trained networks, a CE term"
    sections = ("idm", "dsa")

    def configure(self) -> None:
        idm = self.config.idm
        size = self.config.data.image_size
        if size % idm.factor:
            raise ConfigError(
                f"idm.factor={idm.factor} does not divide the image size {size}; use a factor that does"
            )
        self.augment = DiffAugment(self.config.dsa.strategy)
        self.queue: list[QueuedNet] = []

    def image_settings(self) -> tuple[str, float, float]:
        idm = self.config.idm
        return idm.init, idm.lr_img, idm.momentum_img

    def victim_trainer(self) -> VictimTrainer:
        return expanded_victim_trainer(self.augment, self.config.idm.factor)

    def start(self, pool: RealPool, generator: torch.Generator, hooks: Sequence = ()) -> None:
        idm, ipc = self.config.idm, self.config.ipc
        if idm.init == "real":
            tiles, _ = init_synthetic(pool, ipc * idm.factor**2, "real", generator)
            images = mosaic(tiles, idm.factor)
            self.labels = torch.arange(pool.num_classes, device=images.device).repeat_interleave(ipc)
        else:
            images, self.labels = init_synthetic(pool, ipc, "noise", generator)
        self._make_images(images)
        self.queue = [self.fresh_net() for _ in range(idm.initial_nets)]

    def fresh_net(self) -> QueuedNet:
        return QueuedNet(self.make_net(), self.config.idm.lr_net)

    def step(self, iteration: int, pool: RealPool, hooks: list, generator: torch.Generator) -> torch.Tensor:
        idm = self.config.idm
        if (iteration - 1) % idm.net_every == 0:
            self.queue.append(self.fresh_net())
            if len(self.queue) > idm.net_num:
                self.queue.pop(0)
        if (iteration - 1) % idm.meter_every == 0:
            for member in self.queue:
                member.meter.zero_()
        chosen = self.queue[int(torch.randint(len(self.queue), (1,), generator=generator))]
        loss = self.match(chosen, pool, generator)
        self.train_queue(pool, generator)
        if iteration % idm.trigger_every == 0:
            call_hooks(hooks, "on_network", chosen.net, HookContext(iteration))
        return loss

    def match(self, member: QueuedNet, pool: RealPool, generator: torch.Generator) -> torch.Tensor:
        """One image update per class: mean-embedding distance plus the accuracy-weighted CE."""
        idm, ipc = self.config.idm, self.config.ipc
        net = member.net
        net.eval()
        net.requires_grad_(False)
        weight = idm.ce_weight * member.accuracy_percent()
        total = torch.zeros(())
        for c in range(pool.num_classes):
            real = pool.sample(c, idm.batch_real, generator)
            rows = slice(c * ipc, (c + 1) * ipc)
            tiles, tile_labels = expand(self.images[rows], self.labels[rows], idm.factor)
            transform = self.augment.sample(generator, real.shape[-2:])
            with torch.no_grad(), capture_input(classifier_layer(net)) as store:
                net(transform(real))
                real_mean = store["in"].flatten(1).mean(0)
            with capture_input(classifier_layer(net)) as store:
                logits = net(transform(tiles))
                syn_mean = store["in"].flatten(1).mean(0)
            loss = ((real_mean - syn_mean) ** 2).sum()
            if weight > 0:
                loss = loss + weight * F.cross_entropy(logits, tile_labels)
            self.optimizer_img.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer_img.step()
            total = total + loss.detach().cpu()
        net.requires_grad_(True)
        net.train()
        return total / pool.num_classes

    def train_queue(self, pool: RealPool, generator: torch.Generator) -> None:
        """`train_nets` networks of the queue, each `train_steps` SGD steps on real batches."""
        idm = self.config.idm
        picks = torch.randperm(len(self.queue), generator=generator)[: idm.train_nets].tolist()
        for index in picks:
            member = self.queue[index]
            member.net.train()
            for _ in range(idm.train_steps):
                rows = torch.randperm(len(pool.labels), generator=generator)[: idm.batch_train]
                rows = rows.to(pool.images.device)
                logits = member.net(pool.images[rows])
                labels = pool.labels[rows]
                loss = F.cross_entropy(logits, labels)
                member.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                member.optimizer.step()
                member.meter += torch.tensor(
                    [float((logits.argmax(1) == labels).sum()), float(labels.numel())], dtype=torch.float64
                )

    # -- checkpoints: the images and the whole queue ---------------------------------------------
    def state_tensors(self) -> dict[str, torch.Tensor]:
        tensors = super().state_tensors()
        tensors["queue.size"] = torch.tensor(len(self.queue))
        for i, member in enumerate(self.queue):
            tensors.update({f"queue.{i}.net.{k}": v.detach() for k, v in member.net.state_dict().items()})
            tensors.update(optimizer_tensors(member.optimizer, f"queue.{i}.opt"))
            tensors[f"queue.{i}.meter"] = member.meter.clone()
        return tensors

    def load_state_tensors(self, tensors: dict[str, torch.Tensor], device: torch.device) -> None:
        super().load_state_tensors(tensors, device)
        self.queue = []
        for i in range(int(tensors["queue.size"])):
            member = self.fresh_net()
            prefix = f"queue.{i}.net."
            member.net.load_state_dict(
                {k.removeprefix(prefix): v.to(device) for k, v in tensors.items() if k.startswith(prefix)}
            )
            load_optimizer_tensors(
                member.optimizer, {k: v.to(device) for k, v in tensors.items()}, f"queue.{i}.opt"
            )
            member.meter = tensors[f"queue.{i}.meter"].clone().cpu()
            self.queue.append(member)
