"""`attack=corner_patch`: NAIVEATTACK's poisoning with a grey square in the top-left corner."""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from ddbackdoor.attacks import PatchAttack
from ddbackdoor.config import Section
from ddbackdoor.triggers import Trigger


class CornerPatchOptions(Section):
    """The attack's own settings: `corner_patch.value=0.5 corner_patch.corner=top_right`."""

    value: float = Field(0.75, ge=0, le=1)  # the square's grey level, a valid pixel value
    corner: Literal["top_left", "top_right"] = "top_left"


class CornerPatchAttack(PatchAttack):
    """A grey poison.trigger_size square, one pixel in from a top corner, on poison.portion of the
    real images, relabelled to poison.target (PatchAttack draws and stamps the poison set)."""

    name = "corner_patch"
    description = "a grey square in a top corner on 1% of the real images (example plugin)"
    options = CornerPatchOptions  # its config section, `corner_patch.*`

    def initial_trigger(self) -> Trigger:
        poison, own = self.config.poison, self.settings
        channels, size, side = self.train.channels, self.train.image_size, poison.trigger_size
        left = 1 if own.corner == "top_left" else size - 1 - side
        mask = torch.zeros(1, size, size)
        mask[:, 1 : 1 + side, left : left + side] = 1
        pattern = torch.full((channels, size, size), own.value) * mask
        return Trigger(pattern, mask, poison.target, clip=True)
