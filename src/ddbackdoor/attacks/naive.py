"""NAIVEATTACK and the clean baseline."""

from __future__ import annotations

from ..distill.base import RealPool
from ..triggers import Trigger, white_patch
from .base import PatchAttack


class NaiveAttack(PatchAttack):
    """A fixed white patch on floor(portion * N) real images, relabelled to the target."""

    name = "naive"

    def initial_trigger(self) -> Trigger:
        p = self.config.poison
        return white_patch(self.train.channels, self.train.image_size, p.trigger_size, p.target, p.clip)


class NoAttack(NaiveAttack):
    """Clean distillation. ASR is still measured, with the NAIVEATTACK patch."""

    name = "none"

    def prepare(self, pool: RealPool) -> None:
        return None

    def summary(self) -> dict:
        return {"poisoned": 0}
