"""Attacks, by name."""

from .base import PatchAttack
from .doorping import DoorpingAttack
from .naive import NaiveAttack, NoAttack

ATTACKS: dict[str, type[PatchAttack]] = {
    "none": NoAttack,
    "naive": NaiveAttack,
    "doorping": DoorpingAttack,
}

__all__ = ["ATTACKS", "DoorpingAttack", "NaiveAttack", "NoAttack", "PatchAttack"]
