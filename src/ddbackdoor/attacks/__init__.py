"""Attacks, by name."""

from .base import PatchAttack
from .doorping import DoorpingAttack
from .naive import NaiveAttack, NoAttack
from .target_patch import TargetPatchAttack

ATTACKS: dict[str, type[PatchAttack]] = {
    "none": NoAttack,
    "naive": NaiveAttack,
    "doorping": DoorpingAttack,
    "target_patch": TargetPatchAttack,
}

__all__ = ["ATTACKS", "DoorpingAttack", "NaiveAttack", "NoAttack", "PatchAttack", "TargetPatchAttack"]
