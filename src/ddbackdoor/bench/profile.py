"""A profile of one DC iteration of each path: the top operators."""

from __future__ import annotations

import time

import torch

from .dc import dc_iteration
from .measure import (
    sync,
)
from .setup import STRAIGHTFORWARD, Bench, fast_dc_options, in_retained_heap


def _self_time_us(event, device: torch.device) -> float:
    if device.type == "cuda":  # renamed across torch versions
        return float(getattr(event, "self_device_time_total", getattr(event, "self_cuda_time_total", 0)))
    return float(event.self_cpu_time_total)


def profile_dc(b: Bench, rows: int = 20) -> str:
    """Where one DC iteration (IPC 10) spends its time, per path: the top operators by self time
    on the device, the summed CPU and device time and the wall time (launch-bound when the CPU sum
    is near the wall time and the device sum far below it)."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if b.device.type == "cuda" else [])
    sort = "self_cuda_time_total" if b.device.type == "cuda" else "self_cpu_time_total"
    parts = []
    for name, options in (
        ("straightforward", STRAIGHTFORWARD),
        ("fast", fast_dc_options(b.device, b.reproducible)),
    ):
        fn = dc_iteration(b, 10, options)
        if name == "fast":
            fn = in_retained_heap(fn)
        fn()  # warm-up
        sync(b.device)
        start = time.perf_counter()
        with profile(activities=activities) as prof:
            fn()
            sync(b.device)
        wall = time.perf_counter() - start
        averages = prof.key_averages()
        cpu = sum(float(e.self_cpu_time_total) for e in averages) / 1e3
        device = sum(_self_time_us(e, b.device) for e in averages) / 1e3 if b.device.type == "cuda" else 0
        calls = sum(int(e.count) for e in averages)
        parts.append(
            f"== {name} ({', '.join(options)}): wall {wall * 1e3:.1f} ms under the profiler, "
            f"CPU self time {cpu:.1f} ms, device self time {device:.1f} ms, {calls} operator calls"
        )
        try:
            parts.append(averages.table(sort_by=sort, row_limit=rows))
        except (AttributeError, KeyError, ValueError):  # an older/newer torch without this sort key
            parts.append(averages.table(row_limit=rows))
    return "\n".join(parts)
