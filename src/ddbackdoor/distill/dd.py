"""DD: dataset distillation by unrolled optimisation (Wang et al., 2018), as the NDSS'23 authors ran it.

The synthetic set is `ipc` images per class (class-major, hard labels) split into
`distill_steps` data steps of `ipc / distill_steps` images per class, plus one
learned learning rate per unrolled step. A network trains on the steps in order,
`distill_epochs` times over (T = steps x epochs plain SGD steps, step t using
data step t mod steps and its own lr); the outer loss is the cross-entropy of
the end weights on a real batch, back-propagated through all T steps to the
images and the lrs (Adam, lr 0.01, betas 0.5/0.999, x0.5 every 40 epochs of
the real data). The unroll is `torch.func.functional_call` over a dict of
weights, so no module is rebuilt per step.

Learning rates are softplus-parametrised as in the authors' code (raw =
log(expm1(lr)), lr = softplus(raw)), so they stay positive whatever Adam does
to the raw values. The authors' only numerical safeguard is that and a stop on
a NaN loss; we also stop, with a `NumericalError`, as soon as the unrolled end
weights are not finite, before any hook reads them.

Hooks see the unrolled end weights (detached, in a real module) after every
unroll and before the outer loss, as in the authors' code, where DOORPING's
re-stamped real batch is the one the outer loss then reads. DD has one unroll
per iteration and its network is always trained, so the context says
`is_last_outer=False`: the "network not trained after the last update" case of
DC does not arise.

Initial weights (`dd.init`):
- `random` (default): a fresh network from `make_net()` every iteration, Wang
  et al.'s "unknown init" mode. The steps must then train *any* network of the
  architecture's init distribution, which is what a victim who initialises its
  own model needs.
- `fixed`: one init drawn at the start and reused every iteration, the
  authors' `known_init` mode (their default, with one network). Steps
  distilled this way can exploit that one init and say little about a fresh one.
Either way the weights drawn at the start are kept (`extra.init.<name>`).

Victim protocols (`dd.victim_protocol`); both replay the learned steps (images
and lrs, in order, plain SGD, no momentum or weight decay; `eval.epochs`, `lr`
and `batch` do not apply) and are tested on the full test set:
- `authors`: replay from the initial weights kept in the synthetic set, as the
  authors' `same_as_train` evaluation does (they also tested one 1024-image
  test batch; we always use the full test set). Every victim is then the same
  network, and with `dd.init=fixed` it is the very init the steps were fitted
  to: it measures how well the steps train *that* init.
- `honest` (default): replay from the fresh random init evaluation hands in
  (its own seed per victim). The threat model's victim initialises its own
  network; it receives images and lrs, not the attacker's weights. This is the
  number that says what the distilled set is worth to someone else, and the
  spread over victims means something.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from ..errors import ArtifactError, ConfigError, NumericalError
from ..transfer import to_device
from .base import (
    Distiller,
    HookContext,
    RealPool,
    SyntheticSet,
    VictimTrainer,
    call_hooks,
    init_synthetic,
    load_optimizer_tensors,
    optimizer_tensors,
)

INIT_PREFIX = "init."

Weights = dict[str, torch.Tensor]


def softplus_inverse(lr: torch.Tensor) -> torch.Tensor:
    """The raw value whose softplus is `lr` (lr > 0)."""
    return torch.log(torch.expm1(lr))


@dataclass(frozen=True)
class StepLayout:
    """How a class-major synthetic set is cut into data steps and replayed."""

    ipc: int
    distill_steps: int
    distill_epochs: int

    @property
    def total(self) -> int:
        return self.distill_steps * self.distill_epochs

    def batches(self, images: torch.Tensor, labels: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Data step s holds images [s*m, (s+1)*m) of every class (m = ipc / steps), class-major."""
        steps, rest = self.distill_steps, images.shape[1:]
        classes, per_step = images.shape[0] // self.ipc, self.ipc // steps
        x = images.reshape(classes, steps, per_step, *rest).transpose(0, 1)
        y = labels.reshape(classes, steps, per_step).transpose(0, 1)
        x = x.reshape(steps, classes * per_step, *rest)
        y = y.reshape(steps, classes * per_step)
        return list(zip(x.unbind(0), y.unbind(0), strict=True))


def unroll(
    net: nn.Module,
    weights: Weights,
    buffers: Weights,
    batches: list[tuple[torch.Tensor, torch.Tensor]],
    lrs: torch.Tensor,
) -> Weights:
    """T differentiable SGD steps w <- w - lr_t * grad L(w; batch t mod len); returns the end weights.

    `weights` must require grad; the graph reaches back to them, the images and `lrs`.
    """
    for t in range(lrs.numel()):
        images, labels = batches[t % len(batches)]
        loss = F.cross_entropy(functional_call(net, (weights, buffers), (images,)), labels)
        grads = torch.autograd.grad(loss, list(weights.values()), create_graph=True)
        weights = {name: w - lrs[t] * g for (name, w), g in zip(weights.items(), grads, strict=True)}
    return weights


def replay(net: nn.Module, synthetic: SyntheticSet, layout: StepLayout) -> nn.Module:
    """Train `net` in place on the learned steps: the same SGD updates as `unroll`, without a graph."""
    if synthetic.lrs is None:
        raise ArtifactError("this synthetic set has no learned lrs; DD victims need them (key 'lrs')")
    batches = layout.batches(synthetic.images.detach(), synthetic.labels)
    lrs = synthetic.lrs.detach()
    params = list(net.parameters())
    net.train()
    for t in range(lrs.numel()):
        images, labels = batches[t % len(batches)]
        grads = torch.autograd.grad(F.cross_entropy(net(images), labels), params)
        with torch.no_grad():
            for p, g in zip(params, grads, strict=True):
                p.copy_(p - lrs[t] * g)
    return net


def stored_init(synthetic: SyntheticSet) -> Weights:
    init = {k.removeprefix(INIT_PREFIX): v for k, v in synthetic.extras.items() if k.startswith(INIT_PREFIX)}
    if not init:
        raise ArtifactError(
            "this DD synthetic set holds no initial weights (extra.init.*); "
            "evaluate it with dd.victim_protocol=honest"
        )
    return init


def replay_from_stored_init(net: nn.Module, synthetic: SyntheticSet, layout: StepLayout) -> nn.Module:
    """The authors' protocol: every victim starts from the distillation's own initial weights."""
    try:
        net.load_state_dict(stored_init(synthetic))
    except RuntimeError:
        raise ConfigError(
            f"dd.victim_protocol=authors replays from the distillation network's initial weights, which "
            f"do not fit the victim {type(net).__name__}; use dd.victim_protocol=honest for other networks"
        ) from None
    return replay(net, synthetic, layout)


VICTIM_PROTOCOLS: dict[str, Callable[[nn.Module, SyntheticSet, StepLayout], nn.Module]] = {
    "honest": replay,
    "authors": replay_from_stored_init,
}


class DDDistiller(Distiller):
    """Unrolled-optimisation distillation on the shared `Distiller` loop."""

    name = "dd"
    description = (
        "DD (Wang et al. 2018): unrolled training with learned step sizes, the paper's other distiller"
    )
    sections = ("dd",)

    def configure(self) -> None:
        config = self.config
        dd = config.dd
        if config.ipc % dd.distill_steps:
            raise ConfigError(
                f"invalid value {config.ipc} for ipc: DD splits each class's images into "
                f"dd.distill_steps={dd.distill_steps} steps, so ipc must be a multiple of it"
            )
        self.layout = StepLayout(config.ipc, dd.distill_steps, dd.distill_epochs)

    # -- state -------------------------------------------------------------------------
    def start(self, pool: RealPool, generator: torch.Generator, hooks: Sequence = ()) -> None:
        device = pool.images.device
        images, labels = init_synthetic(pool, self.config.ipc, "noise", generator)
        raw = softplus_inverse(torch.full((self.layout.total,), self.config.dd.lr_init, device=device))
        init = {k: v.detach().clone() for k, v in self.make_net().state_dict().items()}
        self._set(images, raw, labels, init)

    def _set(self, images: torch.Tensor, raw_lrs: torch.Tensor, labels: torch.Tensor, init: Weights) -> None:
        dd = self.config.dd
        self.images = images.detach().clone().requires_grad_(True)
        self.raw_lrs = raw_lrs.detach().clone().requires_grad_(True)
        self.labels = labels
        self.init = init
        self.optimizer = torch.optim.Adam([self.images, self.raw_lrs], lr=dd.lr, betas=(dd.beta1, dd.beta2))

    def lrs(self) -> torch.Tensor:
        return F.softplus(self.raw_lrs)

    def synthetic(self) -> SyntheticSet:
        dd = self.config.dd
        return SyntheticSet(
            self.images.detach(),
            self.labels,
            lrs=self.lrs().detach(),
            metadata={
                "distill_steps": dd.distill_steps,
                "distill_epochs": dd.distill_epochs,
                "init": dd.init,
            },
            extras={INIT_PREFIX + k: v for k, v in self.init.items()},
        )

    def state_tensors(self) -> dict[str, torch.Tensor]:
        return {
            "images": self.images.detach(),
            "raw_lrs": self.raw_lrs.detach(),
            "labels": self.labels,
            **{INIT_PREFIX + k: v for k, v in self.init.items()},
            **optimizer_tensors(self.optimizer, "optimizer"),
        }

    def load_state_tensors(self, tensors: dict[str, torch.Tensor], device: torch.device) -> None:
        tensors = {k: v.to(device) for k, v in tensors.items()}
        init = {k.removeprefix(INIT_PREFIX): v for k, v in tensors.items() if k.startswith(INIT_PREFIX)}
        self._set(tensors["images"], tensors["raw_lrs"], tensors["labels"], init)
        load_optimizer_tensors(self.optimizer, tensors, "optimizer")

    def victim_trainer(self) -> VictimTrainer:
        protocol, layout = VICTIM_PROTOCOLS[self.config.dd.victim_protocol], self.layout

        def train(net: nn.Module, synthetic: SyntheticSet, cfg: Any, generator: torch.Generator) -> nn.Module:
            return protocol(net, synthetic, layout)

        return train

    # -- one iteration -------------------------------------------------------------------
    def starting_network(self) -> nn.Module:
        """A module for this iteration, holding the initial weights of its unroll."""
        net = self.make_net()
        if self.config.dd.init == "fixed":
            net.load_state_dict(self.init)
        net.train()
        return net

    def adam_lr(self, iteration: int, pool_size: int) -> float:
        """Step decay by epochs of the real data, as the authors' StepLR (stateless, so resumes exactly)."""
        dd = self.config.dd
        epoch = (iteration - 1) // math.ceil(pool_size / dd.batch_real)
        return dd.lr * dd.decay_factor ** (epoch // dd.decay_epochs)

    def step(self, iteration: int, pool: RealPool, hooks: list, generator: torch.Generator) -> torch.Tensor:
        dd = self.config.dd
        net = self.starting_network()
        weights = {k: v.detach().clone().requires_grad_(True) for k, v in net.named_parameters()}
        buffers = {k: v.clone() for k, v in net.named_buffers()}
        real_index = torch.randperm(pool.labels.numel(), generator=generator)[: dd.batch_real]
        real_index = to_device(real_index, pool.images.device)
        end = unroll(net, weights, buffers, self.layout.batches(self.images, self.labels), self.lrs())
        self.check_finite(end, iteration)
        with torch.no_grad():
            for name, tensor in [*net.named_parameters(), *net.named_buffers()]:
                tensor.copy_(end[name] if name in end else buffers[name])
        call_hooks(hooks, "on_network", net, HookContext(iteration, 0, False))
        real_images, real_labels = pool.images[real_index], pool.labels[real_index]  # after any re-stamp
        loss = F.cross_entropy(functional_call(net, (end, buffers), (real_images,)), real_labels)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        for group in self.optimizer.param_groups:
            group["lr"] = self.adam_lr(iteration, pool.labels.numel())
        self.optimizer.step()
        return loss.detach()

    def check_finite(self, end: Weights, iteration: int) -> None:
        if not bool(torch.stack([torch.isfinite(w).all() for w in end.values()]).all()):
            top = float(self.lrs().detach().max())
            raise NumericalError(
                f"the unrolled DD training diverged at iteration {iteration} (largest learned lr {top:.3g}); "
                "lower dd.lr_init or dd.lr"
            )
