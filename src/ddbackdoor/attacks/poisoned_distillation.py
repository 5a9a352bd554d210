"""Poisoned Distillation (Yang et al., arXiv 2502.04229, formerly "Dark Distillation").

The attacker intercepts a released synthetic set and has no real image: the run's training split
is that set (`data.from_run`), and `distill=rematch` re-optimises it (distill/rematch.py). This
attack makes what the re-optimisation matches besides the set itself, as the release
(Zi-YuanYang/Poisoned_DD, read there, written anew) does:

1. a surrogate (the victims' architecture) trains on the received set: 100 full-batch SGD steps,
   lr 0.01, momentum 0.9, weight decay 5e-4, no augmentation;
2. one image per class by model inversion: from N(0, 1) noise in normalised space, 200 Adam steps
   (lr 0.1) maximising that class's raw logit, no regulariser, no clipping;
3. the trigger stamped on each of them, every one labelled the target: the backdoor batch B, with
   alpha = 0.6 (`pool.backdoor`), so rematch weighs the set's own gradient 0.4 and B's 0.6.

The release's trigger is a 1x1 patch of value 10 in normalised units at the bottom-right corner
(pixel value mean + 10 std, about 3.8 for Fashion-MNIST: far outside [0, 1]); `trigger=authors`
is that. `trigger=valid` is the poison section's patch, clipped (2x2 white by default), with
`rematch.clip=true` keeping the set's pixels valid too. Unlike the release, ASR is scored on the
test images of every class but the target, like every attack here (the release also counts the
target's own images).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..distill.pool import RealPool
from ..errors import ConfigError
from ..triggers import FIXED_PATCHES, Trigger
from .base import PatchAttack


def corner_patch(
    mean: list[float], std: list[float], image_size: int, size: int, value: float, target: int
) -> Trigger:
    """The release's trigger: `value` (normalised units) in every channel of the size x size
    bottom-right corner, unclipped."""
    channels = len(mean)
    mask = torch.zeros(1, image_size, image_size)
    mask[:, image_size - size :, image_size - size :] = 1.0
    pixel = torch.tensor(mean) + value * torch.tensor(std)  # normalised value -> pixel space
    pattern = pixel.view(channels, 1, 1) * mask
    return Trigger(pattern, mask, target, clip=False)


class PoisonedDistillationAttack(PatchAttack):
    """Backdoors a finished synthetic set from that set alone; runs under `distill=rematch`."""

    name = "poisoned_distillation"
    description = (
        "Poisoned Distillation (Yang et al. 2025): backdoor a finished set, no real data (distill=rematch)"
    )
    sections = ("poison", "poisoned_distillation", "rematch")

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if self.config.data.from_run is None or self.config.distill != "rematch":
            raise ConfigError(
                "attack=poisoned_distillation backdoors a finished set: set distill=rematch and "
                "data.from_run=RUN_DIR (a finished run's directory)"
            )
        self.facts: dict = {}

    def initial_trigger(self) -> Trigger:
        cfg, p, data = self.config.poisoned_distillation, self.config.poison, self.train
        if cfg.trigger == "valid":
            return FIXED_PATCHES[p.pattern](data.channels, data.image_size, p.trigger_size, p.target, True)
        return corner_patch(
            list(data.mean), list(data.std), data.image_size, cfg.trigger_size, cfg.trigger_value, p.target
        )

    def prepare(self, pool: RealPool) -> None:
        """The backdoor batch from the received set alone (the pool); no row of it is rewritten."""
        cfg = self.config.poisoned_distillation
        surrogate = self.train_surrogate(pool)
        inverted = self.invert(surrogate, pool)
        pixels = self.train.denormalize(inverted.detach().cpu())
        stamped = self.train.normalize(self.trigger.stamp(pixels)).to(pool.images.device)
        labels = torch.full(
            (len(stamped),), self.config.poison.target, dtype=torch.long, device=pool.images.device
        )
        pool.backdoor = (stamped, labels, cfg.alpha)
        with torch.no_grad():
            self.facts["surrogate_accuracy_on_set"] = float(
                (surrogate(pool.images).argmax(1) == pool.labels).float().mean()
            )
            self.facts["inverted_as_own_class"] = float(
                (surrogate(inverted).argmax(1) == torch.arange(len(inverted), device=inverted.device))
                .float()
                .mean()
            )
            self.facts["backdoor_as_target_by_surrogate"] = float(
                (surrogate(stamped).argmax(1) == self.config.poison.target).float().mean()
            )

    def train_surrogate(self, pool: RealPool) -> nn.Module:
        cfg = self.config.poisoned_distillation
        net = self.victims_architecture(pool.images.device)
        optimizer = torch.optim.SGD(net.parameters(), lr=cfg.surrogate_lr, momentum=0.9, weight_decay=5e-4)
        net.train()
        for _ in range(cfg.surrogate_steps):
            loss = F.cross_entropy(net(pool.images), pool.labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        net.eval()
        net.requires_grad_(False)
        return net

    def invert(self, surrogate: nn.Module, pool: RealPool) -> torch.Tensor:
        """One image per class maximising its raw logit, from normalised N(0, 1) noise."""
        cfg = self.config.poisoned_distillation
        classes = pool.num_classes
        shape = (classes, *pool.images.shape[1:])
        images = torch.randn(shape, generator=self.generator).to(pool.images.device).requires_grad_(True)
        optimizer = torch.optim.Adam([images], lr=cfg.recon_lr)
        own = torch.arange(classes, device=images.device)
        for _ in range(cfg.recon_steps):
            # per image, its own class's logit; the sum keeps each image's step its own
            loss = -surrogate(images)[own, own].sum()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        return images.detach()

    def summary(self) -> dict:
        return {**super().summary(), "backdoor_images": self.train.num_classes, **self.facts}
