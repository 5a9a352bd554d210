"""The demo: clean DC, NAIVEATTACK and DOORPING side by side on the bundled data.

DOORPING runs twice: with the realistic trigger (pixel values clipped to
[0, 1], our default) and with the authors' unclipped trigger, because the two
give very different ASR (see the README). Runs go to separate worker
processes with one thread each: on a small CPU that is nearly twice as fast
as one process with two threads, and fixing the thread count keeps every run
reproducible.
"""

from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from .artifacts import write_json
from .config import build_config
from .experiment import run_experiment

# Longest first, so two workers finish at about the same time.
DEMO_RUNS: dict[str, list[str]] = {
    "doorping_unclipped": ["attack=doorping", "poison.clip=false"],
    "doorping": ["attack=doorping"],
    "clean": ["attack=none"],
    "naive": ["attack=naive"],
}
TABLE_ORDER = ("clean", "naive", "doorping", "doorping_unclipped")


def format_table(summary: dict[str, dict]) -> str:
    """A plain-text table of CTA / ASR (mean +- std over victims)."""
    lines = [f"{'run':<19} {'CTA':>15} {'ASR':>15} {'ASR (all)':>15} {'time':>6}"]
    for name, metrics in summary.items():
        cells = [f"{metrics[k]['mean']:.3f} +- {metrics[k]['std']:.3f}" for k in ("cta", "asr", "asr_all")]
        lines.append(f"{name:<19} {cells[0]:>15} {cells[1]:>15} {cells[2]:>15} {metrics['seconds']:>5.0f}s")
    return "\n".join(lines)


def _run_one(name: str, overrides: list[str], out: str, position: int, progress: bool, restart: bool) -> dict:
    config = build_config({"profile": "quick"}, [*overrides, *DEMO_RUNS[name]])
    run_dir = Path(out) / name  # resumed (or reported, if finished) unless `restart`
    metrics = run_experiment(config, run_dir, progress=progress, position=position, restart=restart)
    if progress:
        print(f"[demo] {name} done in {metrics['seconds']:.0f}s", flush=True)
    return {k: v for k, v in metrics.items() if k != "history"}


def run_demo(
    out_dir: str | Path,
    overrides: list[str] | None = None,
    progress: bool = True,
    jobs: int | None = None,
    restart: bool = False,
) -> dict:
    """Four runs with the `quick` profile (plus overrides); writes summary.json."""
    out = Path(out_dir)
    jobs = jobs or max(1, min(2, os.cpu_count() or 1))
    overrides = ["threads=1", *(overrides or [])] if jobs > 1 else list(overrides or [])
    for name in DEMO_RUNS:  # validate before starting any work
        build_config({"profile": "quick"}, [*overrides, *DEMO_RUNS[name]])
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=jobs, mp_context=context) as pool:
        futures = {
            name: pool.submit(_run_one, name, overrides, str(out), i % jobs, progress, restart)
            for i, name in enumerate(DEMO_RUNS)
        }
        results = {name: future.result() for name, future in futures.items()}
    summary = {name: results[name] for name in TABLE_ORDER}
    write_json(out / "summary.json", summary)
    return summary
