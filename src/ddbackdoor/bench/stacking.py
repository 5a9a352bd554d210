"""(g) K DC runs stacked in one process vs one after another."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..attacks.doorping import DoorpingAttack
from ..distill.dc import DCDistiller
from ..distill.pool import RealPool
from .dc import dc_config, dc_with_doorping
from .measure import (
    compare,
    relative,
)
from .setup import STRAIGHTFORWARD, Bench


def bench_stacking(b: Bench, k: int = 4) -> dict:
    """(g) K DC runs with DOORPING (seeds 0..K-1, IPC 10): one after another vs stacked in one
    process (`ddbackdoor stack`); ratio = runs per hour stacked / one after another."""
    from ..stacked import RunStack

    cfg = dc_config(b, 10, STRAIGHTFORWARD)

    def members() -> list[StackMember]:
        return [StackMember(*dc_with_doorping(b, cfg, seed)) for seed in range(k)]

    alone, together = members(), members()
    stack = RunStack(together, [torch.get_rng_state() for _ in together])  # type: ignore[arg-type]
    images, optimizer = stack.stack_images()

    def one_after_another() -> None:
        for m in alone:
            m.distiller.step(1, m.pool, [m.attack], m.generator)

    def stacked() -> None:
        stack.step(1, images, optimizer)

    check_alone, check_stacked = members(), members()
    for m in check_alone:
        m.distiller.step(1, m.pool, [m.attack], m.generator)
    check = RunStack(check_stacked, [torch.get_rng_state() for _ in check_stacked])  # type: ignore[arg-type]
    check_images, check_optimizer = check.stack_images()
    check.step(1, check_images, check_optimizer)
    expected = torch.stack([m.distiller.images.detach() for m in check_alone])
    result = compare(one_after_another, stacked, max(1, b.scale.dc_repeats - 1), b.device)
    result["check"] = {
        "images_max_abs_diff": float((check_images.detach() - expected).abs().max()),
        "images_relative": relative(check_images.detach(), expected),
    }
    result["setting"] = {"runs": k, "ipc": 10, "width": cfg.net.width, "norm": cfg.net.norm}
    result["note"] = "ratio = runs per hour stacked / one after another (same K iterations timed)"
    return result


@dataclass
class StackMember:
    """What `RunStack` needs of a run, without a run directory (no hooks but the attack)."""

    distiller: DCDistiller
    pool: RealPool
    attack: DoorpingAttack
    generator: torch.Generator
    out: str = "bench"

    def hooks(self) -> list:
        return []


def load_into(module: nn.Module, weights: dict[str, torch.Tensor]) -> nn.Module:
    """Replace every parameter by a (non-leaf) tensor, as the original DD code rebuilt its module."""
    for name, tensor in weights.items():
        owner_name, _, attr = name.rpartition(".")
        owner = module.get_submodule(owner_name)
        del owner._parameters[attr]
        setattr(owner, attr, tensor)
    return module
