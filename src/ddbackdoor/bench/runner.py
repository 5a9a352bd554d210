"""Choosing, running and printing the sections; `ddbackdoor bench` calls `main`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import torch

from ..artifacts import write_json
from ..errors import ConfigError, one_line_error
from ..reproducible import kernel_state, pinned_kernels
from .dc import bench_dc
from .dd import bench_dd
from .matching import bench_matching
from .measure import (
    matmul_flops_per_s,
    tf32,
)
from .options import bench_options
from .profile import profile_dc
from .setup import DATA, SCALES, Bench
from .stacking import bench_stacking
from .trigger import bench_trigger
from .victims import bench_victims

SECTIONS: dict[str, str] = {
    "a_matching": "one gradient-matching outer step",
    "b_trigger": "one DOORPING trigger update",
    "c_victims": "one evaluation of 10 victims",
    "d_dc_iteration": "one DC iteration",
    "e_dd": "one DD outer step",
    "f_options": "device options, each alone on a DC iteration",
    "g_stacking": "4 DC runs stacked in one process vs one after another",
}


def pick_sections(letters: str) -> list[str]:
    """'d,a' -> ['d_dc_iteration', 'a_matching']; '' -> every section in order."""
    if not letters.strip():
        return list(SECTIONS)
    by_letter = {key[0]: key for key in SECTIONS}
    chosen = []
    for letter in (part.strip() for part in letters.split(",")):
        if letter not in by_letter:
            raise ConfigError(f"unknown bench section {letter!r}; accepted: {', '.join(by_letter)}")
        if by_letter[letter] not in chosen:
            chosen.append(by_letter[letter])
    return chosen


def run_bench(
    device: str = "cpu",
    quick: bool = False,
    data: str = "auto",
    seed: int = 0,
    out: Path | None = None,
    progress: Callable[[str], object] = print,
    sections: str = "",
    profile_to: Path | None = None,
    reproducible: bool = False,
    ipcs: tuple[int, ...] = (10, 50),
) -> dict:
    """The chosen sections (letters, in that order; all by default); returns the JSON-ready result,
    also written to `out` after every section, so a run cut short keeps what it measured."""
    chosen = pick_sections(sections)
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for, but torch sees no CUDA device; use --device cpu")
    dev = torch.device(device)
    if data == "auto":
        data = "cifar10-shaped" if dev.type == "cuda" else "fashion-mnist-mini"
    if data not in DATA:
        raise ConfigError(f"unknown bench data {data!r}; accepted: {', '.join(DATA)}")
    scale = SCALES["quick" if quick else dev.type]
    train, test = DATA[data](seed)
    b = Bench(dev, scale, train, test, seed, reproducible)
    # the same thread count either way, so pinned and unpinned timings compare
    with tf32(False), pinned_kernels(reproducible, torch.get_num_threads()):
        peak = matmul_flops_per_s(dev, 512 if quick else 4096 if dev.type == "cuda" else 2048)
        progress(f"fp32 matmul: {peak / 1e9:.1f} GFLOP/s")
        result: dict = {
            "device": str(dev),
            "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
            "threads": torch.get_num_threads(),
            "torch": str(torch.__version__),
            "reproducible": reproducible,
            "kernels": kernel_state(),
            "data": data,
            "quick": quick,
            "scale": asdict(scale),
            "matmul_flop_per_s": peak,
        }
        runs: dict[str, Callable[[], dict]] = {
            "a_matching": lambda: bench_matching(b),
            "b_trigger": lambda: bench_trigger(b),
            "c_victims": lambda: bench_victims(b),
            "d_dc_iteration": lambda: bench_dc(b, peak, ipcs),
            "e_dd": lambda: bench_dd(b),
            "f_options": lambda: bench_options(b),
            "g_stacking": lambda: bench_stacking(b),
        }
        for key in chosen:
            fn = runs[key]
            try:
                result[key] = fn()
            except (RuntimeError, torch.cuda.OutOfMemoryError) as err:  # keep the other sections
                result[key] = {"missing": f"failed: {one_line_error(err)}"}
            progress(format_section(key, result[key]))
            if out is not None:
                write_json(out, result)
        if profile_to is not None:
            profile_to.write_text(profile_dc(b) + "\n")
            progress(f"profile of one DC iteration (IPC 10), both paths: {profile_to}")
    return result


def _line(label: str, r: dict) -> str:
    if "missing" in r:
        return f"{label}: MISSING ({r['missing']})"
    text = f"{label}: baseline {r['baseline_ms']:.1f} ms, fast {r['fast_ms']:.1f} ms, ratio {r['ratio']:.2f}x"
    peaks = r.get("baseline_peak_mib"), r.get("fast_peak_mib")
    if None not in peaks:
        text += f", peak mem {peaks[0]:.0f} / {peaks[1]:.0f} MiB"
    if "fast_fraction_of_matmul" in r:
        text += (
            f", {r['baseline_flop_per_s'] / 1e9:.1f} / {r['fast_flop_per_s'] / 1e9:.1f} GFLOP/s"
            f" = {r['baseline_fraction_of_matmul']:.0%} / {r['fast_fraction_of_matmul']:.0%} of matmul"
        )
    if "check" in r:
        shown = {k: v for k, v in r["check"].items() if not isinstance(v, list)}
        text += "\n    check: " + ", ".join(f"{k}={_fmt(v)}" for k, v in shown.items())
    return text


def _fmt(value: object) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def format_section(key: str, r: dict) -> str:
    title = SECTIONS[key]
    nested = {k: v for k, v in r.items() if isinstance(v, dict) and ("baseline_ms" in v or "missing" in v)}
    lines = [_line(f"{key} {title}", r)] if "baseline_ms" in r or "missing" in r or not nested else []
    lines += [_line(f"{key} {title} [{name}]", v) for name, v in nested.items()]
    return "\n".join(lines)


def main(
    device: str,
    quick: bool,
    data: str,
    out: Path | None,
    threads: int = 0,
    sections: str = "",
    profile_to: Path | None = None,
    reproducible: bool = False,
    ipcs: tuple[int, ...] = (10, 50),
) -> dict:
    """The CLI entry; `threads` > 0 pins torch's intra-op threads (on a loaded CPU, 1 avoids
    OpenMP barrier stalls that make 2 threads many times slower than 1)."""
    if threads:
        torch.set_num_threads(threads)
    return run_bench(
        device,
        quick,
        data,
        out=out,
        sections=sections,
        profile_to=profile_to,
        reproducible=reproducible,
        ipcs=ipcs,
    )
