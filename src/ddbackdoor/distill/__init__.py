"""Distillation methods, by name: the built-in ones and those installed packages register under
the entry-point group `ddbackdoor.distillers` (ddbackdoor.registry)."""

from ..registry import Registry, subclass_check
from .base import Distiller, HookContext, SyntheticSet
from .dc import DCDistiller
from .dd import DDDistiller
from .dm import DMDistiller
from .dsa import DSADistiller
from .idm import IDMDistiller
from .kip import KIPDistiller
from .mtt import MTTDistiller
from .pool import RealPool
from .rdm_dc import RDMDCDistiller
from .rematch import RematchDistiller

DISTILLERS: Registry[type[Distiller]] = Registry(
    "distillation method",
    {
        cls.name: cls
        for cls in (
            DCDistiller,
            DDDistiller,
            DSADistiller,
            DMDistiller,
            IDMDistiller,
            KIPDistiller,
            MTTDistiller,
            RDMDCDistiller,
            RematchDistiller,
        )
    },
    subclass_check(Distiller),
)

__all__ = [
    "DISTILLERS",
    "DCDistiller",
    "DDDistiller",
    "DMDistiller",
    "DSADistiller",
    "Distiller",
    "KIPDistiller",
    "MTTDistiller",
    "HookContext",
    "IDMDistiller",
    "RDMDCDistiller",
    "RealPool",
    "RematchDistiller",
    "SyntheticSet",
]
