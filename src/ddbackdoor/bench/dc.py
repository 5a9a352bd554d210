"""(d) one DC iteration: the plain loop vs the fast path, with FLOP/s; DC config helpers."""

from __future__ import annotations

import statistics
from collections.abc import Callable

import torch

from ..attacks.doorping import DoorpingAttack
from ..distill.dc import DCDistiller
from ..distill.pool import RealPool
from ..profiles import dc_loops
from .measure import (
    compare,
    count_flops,
    relative,
    tf32,
    time_pair,
)
from .setup import STRAIGHTFORWARD, Bench, Scale, fast_dc_options, in_retained_heap


def dc_schedule(s: Scale, ipc: int) -> tuple[int, int]:
    """(outer steps timed, inner loop): the authors' loops at this IPC, capped by the scale."""
    outer, inner = dc_loops(ipc)
    return (min(outer, s.dc_outer) if s.dc_outer else outer), (inner if s.dc_inner is None else s.dc_inner)


def dc_config(b: Bench, ipc: int, overrides: list[str]):
    """The authors' DC at this IPC (their no-norm ConvNet), capped by the bench scale."""
    s = b.scale
    outer, inner = dc_schedule(s, ipc)
    return b.config(
        f"ipc={ipc}",
        f"net.width={s.dc_width}",
        f"dc.batch_real={s.dc_batch_real}",
        f"dc.outer_loop={outer}",
        f"dc.inner_loop={inner}",
        *overrides,
    )


def dc_with_doorping(
    b: Bench, cfg, seed: int
) -> tuple[DCDistiller, RealPool, DoorpingAttack, torch.Generator]:
    """A started DC distiller on its own pool, poisoned by DOORPING (whose updates are part of
    every iteration, as in an attacked run)."""
    pool = b.pool()
    generator = torch.Generator().manual_seed(seed)
    attack = DoorpingAttack(cfg, b.train, generator)
    attack.prepare(pool)
    dc = DCDistiller(cfg, lambda: b.net(cfg.net.width, norm=cfg.net.norm), progress=False)
    dc.start(pool, generator)
    return dc, pool, attack, generator


def dc_iteration(b: Bench, ipc: int, overrides: list[str]) -> Callable[[], object]:
    cfg = dc_config(b, ipc, overrides)
    dc, pool, attack, _ = dc_with_doorping(b, cfg, b.seed)
    return lambda: dc.step(1, pool, [attack], b.generator())


def bench_dc(b: Bench, peak: float, ipcs: tuple[int, ...] = (10, 50)) -> dict:
    """(d) One DC iteration with DOORPING (the authors' network and loops) per IPC, with FLOP/s;
    on CUDA also the fast path with TF32 allowed, and how far one iteration of it drifts."""
    s = b.scale
    out: dict = {}
    for ipc in ipcs:
        plain = dc_iteration(b, ipc, STRAIGHTFORWARD)
        fast = in_retained_heap(dc_iteration(b, ipc, fast_dc_options(b.device, b.reproducible)))
        result = compare(plain, fast, s.dc_repeats, b.device)
        # Both paths do the same arithmetic; FlopCounterMode overcounts grouped convolutions' weight
        # gradients (it ignores `groups`, x classes here), so FLOP/s use the loop's count for both.
        result["flops"] = count_flops(plain)
        result["fast_flops_as_counted"] = count_flops(fast)
        for name in ("baseline", "fast"):
            result[f"{name}_flop_per_s"] = result["flops"] / (result[f"{name}_ms"] / 1e3)
            result[f"{name}_fraction_of_matmul"] = result[f"{name}_flop_per_s"] / peak
        if b.device.type == "cuda":
            result["tf32"] = tf32_variant(b, ipc, plain, result["baseline_ms"])
        authors_outer = dc_loops(ipc)[0]
        outer, inner = dc_schedule(s, ipc)
        result["setting"] = {
            "ipc": ipc,
            "width": s.dc_width,
            "norm": dc_config(b, ipc, []).net.norm,
            "attack": "doorping",
            "batch_real": s.dc_batch_real,
            "outer_steps_timed": outer,
            "authors_outer_loop": authors_outer,
            "inner_loop": inner,
            "full_iteration": outer == authors_outer,
            "fast_options": fast_dc_options(b.device, b.reproducible),
        }
        out[f"ipc{ipc}"] = result
    return out


def tf32_variant(b: Bench, ipc: int, plain: Callable[[], object], baseline_ms: float) -> dict:
    """The fast path with TF32 allowed, against the fp32 straightforward time measured just
    before; drift = relative change of the synthetic set after one iteration from the same start."""
    fast = dc_iteration(b, ipc, fast_dc_options(b.device, b.reproducible))

    def with_tf32() -> None:
        with tf32(True):
            fast()

    times, _ = time_pair(with_tf32, lambda: None, b.scale.dc_repeats, b.device)
    after = {}
    for allowed in (False, True):
        cfg = dc_config(b, ipc, fast_dc_options(b.device, b.reproducible))
        dc, pool, attack, _ = dc_with_doorping(b, cfg, b.seed)
        with tf32(allowed):
            dc.step(1, pool, [attack], b.generator())
        after[allowed] = dc.images.detach()
    fast_ms = statistics.median(times) * 1e3
    return {
        "fast_ms": fast_ms,
        "ratio_to_fp32_baseline": baseline_ms / fast_ms,
        "synthetic_drift_relative": relative(after[True], after[False]),
    }
