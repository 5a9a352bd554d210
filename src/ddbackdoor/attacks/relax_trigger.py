"""RELAX-TRIGGER: a valid-pixel patch chosen, before distillation, so that a kernel ridge
regression on the poisoned data carries the backdoor (after Chung et al., ICLR 2024, "Rethinking
backdoor attacks on dataset distillation: a kernel method perspective").

Their analysis replaces the bilevel problem (the trigger that survives distillation) by a single
level one, because a kernel ridge regression has a closed form. Our reading of it: with the NTK
that KIP distils with (`distill.ntk`, `kip.depth`), fit KRR on a fitting part (clean real images
of every class plus stamped non-target images relabelled to the target) and minimise, over the
patch, the KRR's squared error on a held-out part (clean images keep their labels, stamped ones
go to the target). The patch is a sigmoid of free parameters, so every stamped pixel stays in
[0, 1]. Poisoning then proceeds as NAIVEATTACK's, with this patch, and the trigger is fixed
during distillation (under any distiller). Not a port of their notebook.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..distill.kip import centred_one_hot
from ..distill.ntk import kernel_ridge_predict, relu_ntk
from ..distill.pool import RealPool
from ..triggers import Trigger, patch_box, random_patch
from .base import PatchAttack


class RelaxTriggerAttack(PatchAttack):
    """RELAX-TRIGGER (after Chung et al. 2024): a patch chosen under KIP's kernel before distilling."""

    name = "relax_trigger"
    description = (
        "RELAX-TRIGGER (after Chung et al. 2024): a patch chosen under KIP's kernel before distilling"
    )
    sections = ("poison", "relax_trigger", "kip")

    def initial_trigger(self) -> Trigger:
        p = self.config.poison
        return random_patch(
            self.train.channels, self.train.image_size, p.trigger_size, p.target, self.generator
        )

    def prepare(self, pool: RealPool) -> None:
        self.trigger, self.losses = self.optimised_trigger(pool.images.device)
        super().prepare(pool)

    def split(self, count: int, device: torch.device) -> tuple[torch.Tensor, ...]:
        """Two disjoint random draws of `count` images per class (fit, held out), as index tensors."""
        fit, held = [], []
        for c in range(self.train.num_classes):
            index = torch.nonzero(self.train.labels == c).flatten()
            order = index[torch.randperm(index.numel(), generator=self.generator)]
            fit.append(order[:count])
            held.append(order[count : 2 * count])
        return torch.cat(fit).to(device), torch.cat(held).to(device)

    def optimised_trigger(self, device: torch.device) -> tuple[Trigger, list[float]]:
        cfg, target = self.config.relax_trigger, self.config.poison.target
        classes, size = self.train.num_classes, self.train.image_size
        start, stop = patch_box(size, self.config.poison.trigger_size)
        fit, held = self.split(cfg.per_class, device)
        images = self.train.images.to(device)
        labels = self.train.labels.to(device)
        mask = self.trigger.mask.to(device)
        current = self.trigger.pattern[:, start:stop, start:stop].to(device)
        logits = torch.logit(current.clamp(0.01, 0.99)).clone().requires_grad_(True)
        optimizer = torch.optim.Adam([logits], lr=cfg.lr)
        pad = (start, size - stop, start, size - stop)

        def stamped(index: torch.Tensor, patch: torch.Tensor) -> torch.Tensor:
            x = images[index[labels[index] != target]]
            return self.train.normalize(x * (1 - mask) + F.pad(patch, pad) * mask)

        def part(index: torch.Tensor, patch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            poisoned = stamped(index, patch)
            x = torch.cat([self.train.normalize(images[index]), poisoned])
            y = torch.cat([labels[index], torch.full((poisoned.shape[0],), target, device=device)])
            return x, centred_one_hot(y, classes)

        def loss_of(patch: torch.Tensor) -> torch.Tensor:
            x_fit, y_fit = part(fit, patch)
            x_held, y_held = part(held, patch)
            kernel = lambda a, b: relu_ntk(a, b, depth=self.config.kip.depth)  # noqa: E731
            predicted = kernel_ridge_predict(kernel(x_held, x_fit), kernel(x_fit, x_fit), y_fit, cfg.reg)
            return F.mse_loss(predicted, y_held)

        losses = []
        for _ in range(cfg.steps):
            loss = loss_of(torch.sigmoid(logits))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
        pattern = torch.zeros_like(self.trigger.pattern)
        pattern[:, start:stop, start:stop] = torch.sigmoid(logits).detach().to(pattern.device)
        return self.trigger.with_pattern(pattern), losses

    def summary(self) -> dict:
        return {
            **super().summary(),
            "trigger_loss_start": self.losses[0],
            "trigger_loss_end": self.losses[-1],
        }
