"""NAIVEATTACK and the clean baseline."""

from __future__ import annotations

import torch

from ..distill.pool import RealPool
from ..triggers import FIXED_PATCHES, Trigger
from .base import PatchAttack


class NaiveAttack(PatchAttack):
    """A fixed patch (`poison.pattern`, white by default) on floor(portion * N) real images,
    relabelled to the target."""

    name = "naive"
    description = "NAIVEATTACK (the paper): a fixed patch stamped on 1% of the real images, relabelled"

    def initial_trigger(self) -> Trigger:
        p = self.config.poison
        make = FIXED_PATCHES[p.pattern]
        return make(self.train.channels, self.train.image_size, p.trigger_size, p.target, p.clip)


class BlendAttack(PatchAttack):
    """SIMPLE-TRIGGER (Chung et al., ICLR 2024; `attack=blend`): a fixed full-frame random pattern P
    blended into the poisoned images, x' = (1 - t) x + t P with t = `blend.opacity`; every
    stamped pixel is valid. Poisoning and relabelling as NAIVEATTACK."""

    name = "blend"
    description = "SIMPLE-TRIGGER (Chung et al. 2024): a fixed random image blended into the poisoned images"
    sections = ("poison", "blend")

    def initial_trigger(self) -> Trigger:
        channels, size = self.train.channels, self.train.image_size
        pattern = torch.rand(channels, size, size, generator=self.generator)
        mask = torch.ones(1, size, size)
        return Trigger(pattern, mask, self.config.poison.target, True, opacity=self.config.blend.opacity)


class NoAttack(NaiveAttack):
    """Clean distillation. ASR is still measured, with the NAIVEATTACK patch."""

    name = "none"
    description = "clean distillation (ASR still measured, with NAIVEATTACK's patch)"

    def prepare(self, pool: RealPool) -> None:
        return None

    def summary(self) -> dict:
        return {"poisoned": 0}
