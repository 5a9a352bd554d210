"""Attacks, by name."""

from .base import PatchAttack, attack_generator
from .doorping import DoorpingAttack
from .invisible import InvisibleAttack
from .naive import BlendAttack, NaiveAttack, NoAttack
from .relax_trigger import RelaxTriggerAttack
from .seeded import SeededAttack
from .target_patch import TargetPatchAttack

ATTACKS: dict[str, type[PatchAttack]] = {
    "none": NoAttack,
    "naive": NaiveAttack,
    "doorping": DoorpingAttack,
    "target_patch": TargetPatchAttack,
    "invisible": InvisibleAttack,
    "relax_trigger": RelaxTriggerAttack,
    "blend": BlendAttack,
    "seeded": SeededAttack,
}

__all__ = [
    "ATTACKS",
    "DoorpingAttack",
    "InvisibleAttack",
    "NaiveAttack",
    "NoAttack",
    "PatchAttack",
    "RelaxTriggerAttack",
    "SeededAttack",
    "TargetPatchAttack",
    "attack_generator",
]
