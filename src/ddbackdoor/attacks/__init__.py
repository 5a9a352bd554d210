"""Attacks, by name: the built-in ones and those installed packages register under the
entry-point group `ddbackdoor.attacks` (ddbackdoor.registry)."""

from ..registry import Registry, subclass_check
from .base import PatchAttack, ReoptimisedAttack, attack_generator
from .doorping import DoorpingAttack
from .invisible import InvisibleAttack
from .naive import BlendAttack, NaiveAttack, NoAttack
from .relax_trigger import RelaxTriggerAttack
from .seeded import SeededAttack
from .target_patch import TargetPatchAttack

ATTACKS: Registry[type[PatchAttack]] = Registry(
    "attack",
    {
        cls.name: cls
        for cls in (
            NoAttack,
            NaiveAttack,
            DoorpingAttack,
            TargetPatchAttack,
            InvisibleAttack,
            RelaxTriggerAttack,
            BlendAttack,
            SeededAttack,
        )
    },
    subclass_check(PatchAttack),
)

__all__ = [
    "ATTACKS",
    "DoorpingAttack",
    "InvisibleAttack",
    "NaiveAttack",
    "NoAttack",
    "PatchAttack",
    "ReoptimisedAttack",
    "RelaxTriggerAttack",
    "SeededAttack",
    "TargetPatchAttack",
    "attack_generator",
]
