"""Distillation methods, by name."""

from .base import HookContext, RealPool, SyntheticSet
from .dc import DCDistiller
from .dd import DDDistiller
from .dm import DMDistiller
from .dsa import DSADistiller
from .kip import KIPDistiller
from .mtt import MTTDistiller

DISTILLERS = {
    "dc": DCDistiller,
    "dd": DDDistiller,
    "dsa": DSADistiller,
    "dm": DMDistiller,
    "kip": KIPDistiller,
    "mtt": MTTDistiller,
}

__all__ = [
    "DISTILLERS",
    "DCDistiller",
    "DDDistiller",
    "DMDistiller",
    "DSADistiller",
    "KIPDistiller",
    "MTTDistiller",
    "HookContext",
    "RealPool",
    "SyntheticSet",
]
