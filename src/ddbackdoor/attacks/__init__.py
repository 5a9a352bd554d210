"""Attacks, by name: the built-in ones and those installed packages register under the
entry-point group `ddbackdoor.attacks` (ddbackdoor.registry)."""

from ..registry import Registry, subclass_check
from .base import PatchAttack, ReoptimisedAttack, attack_generator
from .boundary import InkDropAttack, SneakdoorAttack
from .doorping import DoorpingAttack
from .invisible import InvisibleAttack
from .naive import BlendAttack, NaiveAttack, NoAttack
from .poisoned_distillation import PoisonedDistillationAttack
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
            InkDropAttack,
            SneakdoorAttack,
            PoisonedDistillationAttack,
        )
    },
    subclass_check(PatchAttack),
)

__all__ = [
    "ATTACKS",
    "DoorpingAttack",
    "InkDropAttack",
    "SneakdoorAttack",
    "InvisibleAttack",
    "NaiveAttack",
    "NoAttack",
    "PatchAttack",
    "PoisonedDistillationAttack",
    "ReoptimisedAttack",
    "RelaxTriggerAttack",
    "SeededAttack",
    "TargetPatchAttack",
    "attack_generator",
]
