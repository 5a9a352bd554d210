"""INVISIBLE, as intended (after Li et al., "Invisible backdoor attacks on deep neural
networks via steganography and regularization").

The trigger is a full-frame additive perturbation delta, stamped as clip(x + delta, 0, 1) on the
poisoned real images and, at evaluation, on the test images. It starts from a target-class
image scaled into [-tau, tau] and, at every network the distiller hands out (DOORPING's
schedule), Adam moves it so that the network's selected units (DOORPING's layer / top-k by
incoming weight; their pre-activation, so a unit dead after its ReLU still has a gradient) reach
alpha times their starting value (at least `activation_floor`) on the stamped poisoned images,
while a hinge penalty sum(max(0, |delta| - tau)) keeps every pixel change under tau. tau adapts
as in Carlini & Wagner's L-inf attack: whenever an update ends with every |delta| below tau (up
to one Adam step), tau
shrinks by `tau_decay` (down to `tau_min`), so the perturbation gets as small as the objective
allows. What the authors' release got wrong: its neuron term drove the activation to
zero, it pulled delta towards the normalised black image, and its DC path crashed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..distill.base import HookContext
from ..distill.pool import RealPool
from ..triggers import Trigger, capture_output, select_layer, top_neurons
from .base import ReoptimisedAttack, frozen_network


class InvisibleAttack(ReoptimisedAttack):
    """INVISIBLE (the authors' third attack, as intended): a small full-frame additive perturbation."""

    name = "invisible"
    description = (
        "INVISIBLE (the authors' third attack, as intended): a small full-frame additive perturbation"
    )
    sections = ("poison", "invisible", "doorping")

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.tau = self.config.invisible.tau

    def initial_trigger(self) -> Trigger:
        cfg, target = self.config.invisible, self.config.poison.target
        size = self.train.image_size
        of_target = torch.nonzero(self.train.labels == target).flatten()
        pick = of_target[torch.randint(of_target.numel(), (1,), generator=self.generator)]
        image = self.train.images[pick][0]  # [C, H, W] in [0, 1]
        delta = cfg.tau * (2 * image - 1)  # the target image, scaled into [-tau, tau]
        return Trigger(delta, torch.ones(1, size, size), target, clip=True, additive=True)

    def on_network(self, net: nn.Module, ctx: HookContext) -> None:
        if ctx.is_last_outer or self.poison_index.numel() == 0:  # DOORPING's (authors') schedule
            return
        with frozen_network(net):
            self.update_trigger(net, ctx)
        self.restamp_pool()

    def update_trigger(self, net: nn.Module, ctx: HookContext) -> None:
        cfg, neuron = self.config.invisible, self.config.doorping
        device = next(net.parameters()).device
        layer, _ = select_layer(net, neuron.layer)  # read before the ReLU: a dead unit still moves
        units = top_neurons(layer, neuron.topk)
        pick = torch.randperm(self.originals.shape[0], generator=self.generator)[: cfg.batch]
        images = self.originals[pick.to(self.originals.device)].to(device)
        delta = self.trigger.pattern.to(device).clone().requires_grad_(True)
        optimizer = torch.optim.Adam([delta], lr=cfg.lr)
        with capture_output(layer) as store:

            def activations(change: torch.Tensor) -> torch.Tensor:
                net(self.train.normalize((images + change).clamp(0, 1)))
                return store["out"][:, units].flatten(1).mean(dim=1)  # per image, mean over units

            with torch.no_grad():
                start = activations(delta)
                target = neuron.alpha * start.clamp(min=cfg.activation_floor)

            def loss_of(change: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
                neuron_loss = F.mse_loss(activations(change), target)
                penalty = (change.abs() - self.tau).clamp(min=0).sum()
                return neuron_loss, neuron_loss + cfg.penalty * penalty

            first = float(loss_of(delta)[0].detach())
            for _ in range(cfg.steps):
                _, loss = loss_of(delta)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            with torch.no_grad():
                last = float(loss_of(delta)[0])
        change = delta.detach()
        linf = float(change.abs().max())
        tau_before = self.tau
        # Adam's steps are about lr in size, so a delta held at the threshold by the penalty sits
        # within one step of it: that counts as under it
        if linf <= self.tau + cfg.lr:
            self.tau = max(cfg.tau_min, self.tau * cfg.tau_decay)
        self.trigger = self.trigger.with_pattern(change.to(self.trigger.pattern.device))
        self.updates += 1
        self.records.append(
            {
                "iteration": ctx.iteration,
                "outer": ctx.outer_step,
                "units": units.flatten().tolist(),
                "start_activation": float(start.mean()),
                "target_activation": float(target.mean()),
                "loss_start": first,
                "loss_end": last,
                "steps": cfg.steps,
                "tau": tau_before,
                "linf": linf,
                "l2": float(change.norm()),
            }
        )

    def state(self) -> tuple[dict[str, torch.Tensor], dict]:
        tensors, meta = super().state()
        return tensors, {**meta, "tau": self.tau}

    def load_state(self, tensors: dict[str, torch.Tensor], meta: dict, pool: RealPool) -> None:
        super().load_state(tensors, meta, pool)
        self.tau = float(meta["tau"])

    def summary(self) -> dict:
        return {**super().summary(), "tau": self.tau, "linf": float(self.trigger.pattern.abs().max())}
