"""Rematch: re-optimise a received synthetic set by gradient matching against itself.

This is the procedure of Poisoned Distillation (Yang et al., arXiv 2502.04229; release
Zi-YuanYang/Poisoned_DD, read there and written anew): the attacker holds a finished set S0 and
no real image (`data.from_run`: the pool is S0). S starts as S0; iteration k (1-based) draws a
fresh network, trains it k - 1 full-batch SGD steps on a batch of S0, and then, the network held
fixed, takes `rematch.steps` Adam steps (lr 0.1, one optimiser for the whole run) on S with

    L = (1 - alpha) D(g(S), g(S0 batch)) + alpha D(g(S), g(B)),

g(.) the gradient of the cross-entropy over all the network's parameters, D one minus the cosine
of the two flattened gradients (over all layers at once, not DC's per-layer distance), and B the
images an attack put in `pool.backdoor` with their labels and alpha (none: alpha 0, a clean
re-optimisation, the control). The release runs 11 iterations (its `Iteration` 10, counted from 0)
of 101 steps, without augmentation and without clipping S; `rematch.clip` keeps S valid pixels.

Victims train as the received set's own distiller has them train (`rematch.victims=received`, so
CTA compares with the clean run's: DM's and DSA's sets with augmentation); the release evaluates by
plain SGD (`rematch.victims=plain`). A received IDM set is matched as it is stored (each mosaic one
image); its victims see it expanded, as IDM's do.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from .base import (
    HookContext,
    ImageSGDDistiller,
    VictimTrainer,
    call_hooks,
)
from .pool import RealPool


def flat_gradient(
    net: nn.Module, images: torch.Tensor, labels: torch.Tensor, create_graph: bool
) -> torch.Tensor:
    params = [p for p in net.parameters() if p.requires_grad]
    loss = F.cross_entropy(net(images), labels)
    grads = torch.autograd.grad(loss, params, create_graph=create_graph)
    return torch.cat([g.flatten() for g in grads])


def cosine_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """1 - <a, b> / (|a| |b| + 1e-6), the release's `cos` metric over whole gradients."""
    return 1 - (a * b).sum() / (a.norm() * b.norm() + 1e-6)


class RematchDistiller(ImageSGDDistiller):
    """Gradient matching of a received set against itself and an attack's backdoor batch."""

    name = "rematch"
    description = (
        "re-optimise a finished set by gradient matching against itself (Poisoned Distillation's procedure)"
    )
    sections = ("rematch",)
    reads_received = True

    def configure(self) -> None:
        if self.config.data.from_run is None:
            raise ConfigError(
                "distill=rematch re-optimises a finished synthetic set; set data.from_run=RUN_DIR "
                "(a finished run's directory)"
            )

    def victim_trainer(self) -> VictimTrainer | None:
        """`rematch.victims=received`: the received set's own distiller's protocol; plain SGD otherwise."""
        if self.config.rematch.victims == "plain" or self.received is None:
            return None
        return self.received.victim_trainer()

    def start(self, pool: RealPool, generator: torch.Generator, hooks: Sequence = ()) -> None:
        classes, ipc = pool.num_classes, self.config.ipc
        if len(pool.labels) != classes * ipc:
            raise ConfigError(
                f"distill=rematch returns the received set re-optimised: it holds {len(pool.labels)} images, "
                f"not ipc={ipc} x {classes} classes; set ipc={len(pool.labels) // classes}"
            )
        order = torch.argsort(pool.labels.cpu(), stable=True).to(pool.images.device)
        self.original = pool.images[order].clone()
        self.labels = pool.labels[order].clone()
        self._make_images(self.original)

    def _make_images(self, images: torch.Tensor) -> None:
        """The release's optimiser: Adam on the images (not the SGD of DC, DSA and DM)."""
        self.images = images.detach().clone().requires_grad_(True)
        self.optimizer_img = torch.optim.Adam([self.images], lr=self.config.rematch.lr_img)

    def step(self, iteration: int, pool: RealPool, hooks: list, generator: torch.Generator) -> torch.Tensor:
        cfg = self.config.rematch
        backdoor = pool.backdoor
        alpha = 0.0 if backdoor is None else backdoor[2]
        order = torch.randperm(len(self.labels), generator=generator).to(self.labels.device)
        losses = []
        net = self.make_net()
        for rows in order.split(cfg.batch):
            net = self.trained_net(self.original[rows], self.labels[rows], iteration - 1)
            g_real = flat_gradient(net, self.original[rows], self.labels[rows], False).detach()
            g_bd = None if backdoor is None else flat_gradient(net, backdoor[0], backdoor[1], False).detach()
            for _ in range(cfg.steps):
                g_syn = flat_gradient(net, self.images, self.labels, True)
                loss = (1 - alpha) * cosine_distance(g_syn, g_real)
                if g_bd is not None:
                    loss = loss + alpha * cosine_distance(g_syn, g_bd)
                self.optimizer_img.zero_grad(set_to_none=True)
                loss.backward()
                self.optimizer_img.step()
                if cfg.clip:
                    self.clip_images(pool)
                losses.append(loss.detach())
        call_hooks(hooks, "on_network", net, HookContext(iteration))
        return torch.stack(losses).mean()

    def trained_net(self, images: torch.Tensor, labels: torch.Tensor, steps: int) -> nn.Module:
        """A fresh network after `steps` full-batch SGD steps on the batch (the release's schedule)."""
        net = self.make_net()
        net.train()
        optimizer = torch.optim.SGD(
            net.parameters(), lr=self.config.rematch.lr_net, momentum=0.9, weight_decay=5e-4
        )
        for _ in range(steps):
            loss = F.cross_entropy(net(images), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        return net

    def clip_images(self, pool: RealPool) -> None:
        """Keep S inside the normalised image of [0, 1] (the valid variant)."""
        if pool.pixel_range is None:
            raise ConfigError("rematch.clip=true needs the pool's pixel range (a pool built by a run)")
        low, high = pool.pixel_range
        with torch.no_grad():
            self.images.copy_(torch.maximum(torch.minimum(self.images, high), low))

    def state_tensors(self) -> dict[str, torch.Tensor]:
        return {**super().state_tensors(), "original": self.original}

    def load_state_tensors(self, tensors: dict[str, torch.Tensor], device: torch.device) -> None:
        self.original = tensors["original"].to(device)
        super().load_state_tensors(tensors, device)
