"""TARGETPATCH: a valid-pixel alternative to DOORPING's trigger update.

DOORPING asks the trigger, on a black image, to drive one unit to 10x its
starting activation. Inside [0, 1] that target is out of reach, so Adam runs
until the box pins the patch at a corner picked by a gradient sign that has
nothing to do with the target class, dead units give no move at all, and
black ("no trigger" on a dark background) is never penalised.

Here the objective is the backdoor itself: stamp real images of the other
classes with the patch and raise the current network's target logit
(cross-entropy towards the target class), with the patch a sigmoid of free
parameters, so every value stays inside [0, 1] smoothly and a patch that
changes nothing is the worst outcome, not a resting point. Updates stop after
`freeze_after` of the iterations, so the synthetic set's last iterations
learn the trigger that evaluation stamps.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..distill.base import HookContext
from ..triggers import Trigger, patch_box, random_patch
from .base import ReoptimisedAttack, frozen_network


class TargetPatchAttack(ReoptimisedAttack):
    """TARGETPATCH (ours): a valid-pixel patch optimised to raise the target logit."""

    name = "target_patch"
    description = (
        "TARGETPATCH (ours): a valid-pixel patch optimised to raise the current network's target logit"
    )
    sections = ("poison", "target_patch")

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        labels = self.train.labels
        self.others = torch.nonzero(labels != self.config.poison.target).flatten()

    def initial_trigger(self) -> Trigger:
        p = self.config.poison
        return random_patch(
            self.train.channels, self.train.image_size, p.trigger_size, p.target, self.generator
        )

    def frozen(self, iteration: int) -> bool:
        return iteration > self.config.target_patch.freeze_after * self.config.iterations

    def on_network(self, net: nn.Module, ctx: HookContext) -> None:
        if ctx.is_last_outer or self.frozen(ctx.iteration):
            return
        with frozen_network(net):
            self.update_trigger(net, ctx)
        self.restamp_pool()

    def update_trigger(self, net: nn.Module, ctx: HookContext) -> None:
        cfg = self.config.target_patch
        device = next(net.parameters()).device
        start, stop = patch_box(self.train.image_size, self.config.poison.trigger_size)
        pick = torch.randperm(self.others.numel(), generator=self.generator)[: cfg.batch]
        images = self.train.images[self.others[pick]].to(device)
        mask = self.trigger.mask.to(device)
        target = torch.full((images.shape[0],), self.trigger.target, device=device)
        current = self.trigger.pattern[:, start:stop, start:stop].to(device)
        logits_of = torch.logit(current.clamp(0.01, 0.99)).clone().requires_grad_(True)
        optimizer = torch.optim.Adam([logits_of], lr=cfg.lr)

        def loss_of(param: torch.Tensor) -> torch.Tensor:
            pattern = F.pad(
                torch.sigmoid(param), (start, images.shape[-1] - stop, start, images.shape[-2] - stop)
            )
            stamped = images * (1 - mask) + pattern * mask
            return F.cross_entropy(net(self.train.normalize(stamped)), target)

        first = float("nan")
        for step in range(cfg.steps):
            loss = loss_of(logits_of)
            if step == 0:
                first = float(loss.detach())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            last = float(loss_of(logits_of))
            patch = torch.sigmoid(logits_of)
        pattern = torch.zeros_like(self.trigger.pattern)
        pattern[:, start:stop, start:stop] = patch.to(pattern.device)
        self.trigger = Trigger(pattern, self.trigger.mask, self.trigger.target, True)
        self.updates += 1
        self.records.append(
            {
                "iteration": ctx.iteration,
                "outer": ctx.outer_step,
                "loss_start": first,
                "loss_end": last,
                "steps": cfg.steps,
                "stopped": "steps",
                "patch_min": float(patch.min()),
                "patch_max": float(patch.max()),
                "outside_unit_share": 0.0,
                "patch": patch.detach().cpu().tolist(),
                "box": [start, stop],
            }
        )
