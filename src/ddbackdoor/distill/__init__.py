"""Distillation methods, by name."""

from .base import HookContext, RealPool, SyntheticSet
from .dc import DCDistiller

DISTILLERS = {"dc": DCDistiller}

__all__ = ["DISTILLERS", "DCDistiller", "HookContext", "RealPool", "SyntheticSet"]
