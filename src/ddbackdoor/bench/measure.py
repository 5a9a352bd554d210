"""Timing, memory and FLOP measurement, and agreement checks."""

from __future__ import annotations

import contextlib
import statistics
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode


# -- measuring -------------------------------------------------------------------------------------
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_pair(
    baseline: Callable[[], object],
    fast: Callable[[], object],
    repeats: int,
    device: torch.device,
    warm_up: bool = True,
) -> tuple[list[float], list[float]]:
    """Seconds per call for both, after one warm-up each, alternating so load hits both alike."""
    times: tuple[list[float], list[float]] = ([], [])
    for fn in (baseline, fast) if warm_up else ():
        fn()
    for _ in range(repeats):
        for fn, out in zip((baseline, fast), times, strict=True):
            sync(device)
            start = time.perf_counter()
            fn()
            sync(device)
            out.append(time.perf_counter() - start)
    return times


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def peak_memory_mib(fn: Callable[[], object], device: torch.device) -> float | None:
    """CUDA: max_memory_allocated above the start; CPU: peak RSS above the start (Linux)."""
    if device.type == "cuda":
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        sync(device)
        return (torch.cuda.max_memory_allocated(device) - before) / 2**20
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    except OSError:
        return None
    before = _rss_kib("VmRSS")
    fn()
    return (_rss_kib("VmHWM") - before) / 1024


def compare(
    baseline: Callable[[], object], fast: Callable[[], object], repeats: int, device: torch.device
) -> dict:
    # the memory-measuring calls are the warm-ups (on a CPU a call of the authors' scale takes
    # minutes, so no call is spent on memory alone)
    peaks = peak_memory_mib(baseline, device), peak_memory_mib(fast, device)
    base_t, fast_t = time_pair(baseline, fast, repeats, device, warm_up=False)
    base_ms, fast_ms = statistics.median(base_t) * 1e3, statistics.median(fast_t) * 1e3
    return {
        "baseline_ms": base_ms,
        "fast_ms": fast_ms,
        "ratio": base_ms / fast_ms,
        "baseline_runs_ms": [t * 1e3 for t in base_t],
        "fast_runs_ms": [t * 1e3 for t in fast_t],
        "baseline_peak_mib": peaks[0],
        "fast_peak_mib": peaks[1],
    }


def count_flops(fn: Callable[[], object]) -> int:
    with FlopCounterMode(display=False) as counter, warnings.catch_warnings():
        # the counter's module hooks make torch.compile warn that they fire twice; they only count
        warnings.filterwarnings("ignore", message=".*global hooks on modules.*")
        fn()
    return int(counter.get_total_flops())


def matmul_flops_per_s(device: torch.device, n: int, repeats: int = 5) -> float:
    """fp32 (no TF32) throughput of one large square matmul: the machine's practical peak."""
    a, b = (torch.randn(n, n, device=device) for _ in range(2))
    with tf32(False):
        times, _ = time_pair(lambda: torch.mm(a, b), lambda: None, repeats, device)
    return 2 * n**3 / statistics.median(times)


@contextlib.contextmanager
def tf32(enabled: bool):
    old = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


@contextlib.contextmanager
def cudnn_benchmark():
    old = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = True
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = old


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30))
