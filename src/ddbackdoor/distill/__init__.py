"""Distillation methods, by name."""

from .base import HookContext, RealPool, SyntheticSet
from .dc import DCDistiller
from .dd import DDDistiller
from .dm import DMDistiller
from .dsa import DSADistiller

DISTILLERS = {"dc": DCDistiller, "dd": DDDistiller, "dsa": DSADistiller, "dm": DMDistiller}

__all__ = [
    "DISTILLERS",
    "DCDistiller",
    "DDDistiller",
    "DMDistiller",
    "DSADistiller",
    "HookContext",
    "RealPool",
    "SyntheticSet",
]
