"""DC: dataset condensation with gradient matching, with the authors' defaults.

Each iteration draws a fresh network. Per outer step, for every class, the
gradient of the loss on a real batch is matched (1 - cosine per output row)
by the gradient on that class's synthetic images; the images take one SGD
step; then the network trains on the synthetic set for `inner_loop` epochs.
Hooks see the network after that training (`on_network`), and the synthetic
set after each iteration (`on_iteration`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, vmap

from ..compiling import EXACT_LAYOUT, Compiler
from ..profiles import dc_loops
from ..transfer import to_device
from .base import HookContext, ImageSGDDistiller, call_hooks
from .matching import batched_distance, match_distance
from .pool import RealPool

# `dc.compile=auto` compiles from this network width on: it paid at 128 (1.27x per DC iteration
# on a CPU) and not at 8 (0.96x); 64 is a choice between the two, not a measured break-even
# (docs/speed.md)
COMPILE_MIN_WIDTH = 64

# inductor options per compiled pass: the real-image gradients are what the synthetic images
# match, so they keep eager's accuracy; the inner training loop only has to be fast
COMPILE_OPTIONS: dict[str, dict[str, object] | None] = {"matching": EXACT_LAYOUT, "training": None}


def has_batchnorm(net: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in net.modules())


def freeze_batchnorm_on_real(
    net: nn.Module, pool: RealPool, per_class: int, generator: torch.Generator
) -> None:
    """Set BN statistics from a few real images per class, then freeze them (authors' DC)."""
    batch = torch.cat([pool.sample(c, per_class, generator) for c in range(pool.num_classes)])
    net.train()
    with torch.no_grad():
        net(batch)
    for module in net.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eval()


def train_epochs(
    net: nn.Module,
    optimizer: torch.optim.Optimizer,
    images: torch.Tensor,
    labels: torch.Tensor,
    epochs: int,
    batch: int,
    generator: torch.Generator,
    augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None,
) -> None:
    """Plain mini-batch training on a (small) tensor dataset, reshuffled every epoch.

    `augment(batch, generator)` (e.g. DSA) transforms each mini-batch before the forward pass.
    """
    for _ in range(epochs):
        perm = to_device(torch.randperm(images.shape[0], generator=generator), images.device)
        for start in range(0, images.shape[0], batch):
            idx = perm[start : start + batch]
            inputs = images[idx] if augment is None else augment(images[idx], generator)
            loss = F.cross_entropy(net(inputs), labels[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()


class DCDistiller(ImageSGDDistiller):
    """Gradient-matching distillation on the shared `Distiller` loop."""

    name = "dc"
    description = "DC (Zhao et al. 2021): gradient matching, the paper's main distiller"
    sections = ("dc",)

    def configure(self) -> None:
        config = self.config
        default_outer, default_inner = dc_loops(config.ipc)
        self.outer_loop = config.dc.outer_loop or default_outer
        self.inner_loop = default_inner if config.dc.inner_loop is None else config.dc.inner_loop
        self.augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None  # DSA sets it
        self._compilers: dict[str, Compiler] = {}  # made on first use, when the device is known

    def compiler(self, device: torch.device, purpose: str) -> Compiler:
        """Compiles the `purpose` pass (a `COMPILE_OPTIONS` key) if `dc.compile` says so
        ("auto": CPU, wide networks)."""
        if purpose not in self._compilers:
            wanted = self.config.dc.compile
            if wanted == "auto":  # never in reproducible mode: inductor compiles for the host's ISA
                wide = self.config.net.width >= COMPILE_MIN_WIDTH
                wanted = device.type == "cpu" and wide and not self.config.reproducible
            self._compilers[purpose] = Compiler(wanted, COMPILE_OPTIONS[purpose])
        return self._compilers[purpose]

    def augment_pair(self, real: torch.Tensor, syn: torch.Tensor, generator: torch.Generator):
        """Hook for DSA: the same random transform on the real and the synthetic batch."""
        return real, syn

    def class_matching_loss(
        self, net: nn.Module, pool: RealPool, syn_images: torch.Tensor, c: int, generator: torch.Generator
    ) -> torch.Tensor:
        """Class c's matching distance: a real batch of the class against its synthetic images."""
        cfg = self.config
        real = pool.sample(c, cfg.dc.batch_real, generator)
        syn = syn_images[c * cfg.ipc : (c + 1) * cfg.ipc]
        params = [p for p in net.parameters() if p.requires_grad]
        real, syn = self.augment_pair(real, syn, generator)
        real_labels = torch.full((real.shape[0],), c, device=real.device)

        def real_gradients(module: nn.Module) -> list[torch.Tensor]:
            loss = F.cross_entropy(module(real), real_labels)
            return [g.detach() for g in torch.autograd.grad(loss, params)]

        grads_real = self.compiler(real.device, "matching").run(net, real_gradients)
        syn_labels = torch.full((syn.shape[0],), c, device=syn.device)
        grads_syn = torch.autograd.grad(F.cross_entropy(net(syn), syn_labels), params, create_graph=True)
        return match_distance(grads_syn, grads_real)

    def matching_loss_batched(
        self, net: nn.Module, pool: RealPool, syn_images: torch.Tensor, generator: torch.Generator
    ) -> torch.Tensor:
        """All classes at once; draws the same real batches, in the same order, as the per-class loop.

        Each class gets its own copy of the weights ([classes, ...] leaves); one vmap'd forward
        runs every class's batch through its copy (grouped kernels), and one backward of the
        summed class losses yields all per-class gradients. Only the forward is vmap'd:
        `vmap(grad(...))` also transforms the backward and the double backward, which measured
        slower than the plain loop. Valid because, with BN frozen, a sample's output depends on
        that sample alone.
        """
        cfg = self.config
        classes = pool.num_classes
        real = torch.stack([pool.sample(c, cfg.dc.batch_real, generator) for c in range(classes)])
        syn = syn_images.reshape(classes, cfg.ipc, *syn_images.shape[1:])
        targets = torch.arange(classes, device=real.device)
        names = [k for k, v in net.named_parameters() if v.requires_grad]
        per_class = {
            k: v.detach().unsqueeze(0).expand(classes, *v.shape).clone().requires_grad_(True)
            for k, v in net.named_parameters()
            if v.requires_grad
        }
        buffers = dict(net.named_buffers())

        def loss(p: dict, images: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
            logits = functional_call(net, (p, buffers), (images,))
            return F.cross_entropy(logits, label.expand(images.shape[0]))

        class_losses = vmap(loss, in_dims=(0, 0, 0))
        leaves = [per_class[k] for k in names]
        grads_real = torch.autograd.grad(class_losses(per_class, real, targets).sum(), leaves)
        syn_loss = class_losses(per_class, syn, targets).sum()
        grads_syn = torch.autograd.grad(syn_loss, leaves, create_graph=True)
        return batched_distance(
            dict(zip(names, grads_syn, strict=True)), dict(zip(names, grads_real, strict=True))
        )

    def can_batch(self, pool: RealPool) -> bool:
        """vmap needs equal batch sizes per class; BN is frozen (eval) during matching."""
        matching = self.config.dc.matching
        wanted = matching == "batched" or (matching == "auto" and pool.images.device.type == "cuda")
        smallest = min(int(index.numel()) for index in pool.by_class)
        return wanted and smallest >= self.config.dc.batch_real

    def image_settings(self) -> tuple[str, float, float]:
        return self.config.dc.init, self.config.dc.lr_img, self.config.dc.momentum_img

    def matching_step(self, net: nn.Module, pool: RealPool, generator: torch.Generator) -> torch.Tensor:
        """One update of the synthetic images; returns the summed matching loss."""
        self.optimizer_img.zero_grad(set_to_none=True)
        if self.can_batch(pool):
            loss = self.matching_loss_batched(net, pool, self.images, generator)
            loss.backward()
            total = loss.detach()
        else:
            total = torch.zeros((), device=self.images.device)
            for c in range(pool.num_classes):
                loss = self.class_matching_loss(net, pool, self.images, c, generator)
                loss.backward()
                total = total + loss.detach()
        self.optimizer_img.step()
        return total

    def step(self, iteration: int, pool: RealPool, hooks: list, generator: torch.Generator) -> torch.Tensor:
        cfg = self.config
        net = self.make_net()
        if cfg.dc.channels_last:  # the convolutions then pick NHWC kernels; results equal to rounding
            net = net.to(memory_format=torch.channels_last)
        net.train()
        optimizer_net = torch.optim.SGD(net.parameters(), lr=cfg.dc.lr_net)
        bn = has_batchnorm(net)
        loss_sum = torch.zeros((), device=self.images.device)
        for outer in range(self.outer_loop):
            if bn:
                freeze_batchnorm_on_real(net, pool, cfg.dc.bn_images_per_class, generator)
            loss_sum = loss_sum + self.matching_step(net, pool, generator)
            last = outer == self.outer_loop - 1
            if not last:
                if bn:
                    net.train()
                self.train_network(net, optimizer_net, generator)
            call_hooks(hooks, "on_network", net, HookContext(iteration, outer, last))
        return loss_sum / (self.outer_loop * pool.num_classes)

    def train_network(
        self, net: nn.Module, optimizer: torch.optim.Optimizer, generator: torch.Generator
    ) -> None:
        """Inner loop: train the network on the current synthetic set (DSA augments here)."""
        images = self.images.detach()

        def train(module: nn.Module) -> None:
            batch = self.config.dc.batch_train
            train_epochs(
                module, optimizer, images, self.labels, self.inner_loop, batch, generator, self.augment
            )

        self.compiler(images.device, "training").run(net, train, generator)
