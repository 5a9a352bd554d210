"""The demo: clean DC, NAIVEATTACK and DOORPING side by side on the bundled data.

DOORPING runs twice: with the realistic trigger (pixel values clipped to
[0, 1], our default) and with the authors' unclipped trigger, because the two
give very different ASR (docs/results-quick.md). Runs go to separate worker
processes with one thread each: on a small CPU that is nearly twice as fast
as one process with two threads. The demo asks for reproducible mode (runs default to the host's
fastest kernels), which makes its table the same on any x86-64 host with AVX2, so it prints no
timings.
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing
import os
import signal
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from .artifacts import write_json
from .errors import Interrupted
from .experiment import run_experiment
from .resolve import build_config

# The demo's (and the quick science checks') runs: the quick profile, in reproducible mode, so their
# table is the same on every x86-64 host with AVX2 (an override can still say reproducible=false).
DEMO_BASE = {"profile": "quick", "reproducible": True}

# Longest first, so two workers finish at about the same time.
DEMO_RUNS: dict[str, list[str]] = {
    "doorping_unclipped": ["attack=doorping", "poison.clip=false"],
    "doorping": ["attack=doorping"],
    "clean": ["attack=none"],
    "naive": ["attack=naive"],
}
TABLE_ORDER = ("clean", "naive", "doorping", "doorping_unclipped")


def format_table(summary: dict[str, dict]) -> str:
    """A plain-text table of CTA / ASR (mean +- population std over victims) and each victim's ASR.

    Timings are left out on purpose: in reproducible mode every figure here is the same on any
    x86-64 host, so the table can be compared character for character with README.md's.
    """
    width = max([19, *(len(name) for name in summary)])
    lines = [f"{'run':<{width}} {'CTA':>15} {'ASR':>15} {'ASR (all)':>15}  per-victim ASR"]
    for name, metrics in summary.items():
        cells = [f"{metrics[k]['mean']:.3f} +- {metrics[k]['std']:.3f}" for k in ("cta", "asr", "asr_all")]
        victims = ", ".join(f"{v:.3f}" for v in metrics["asr"]["values"])
        lines.append(f"{name:<{width}} {cells[0]:>15} {cells[1]:>15} {cells[2]:>15}  {victims}")
    return "\n".join(lines)


def _run_one(overrides: list[str], run_dir: str, position: int, progress: bool, restart: bool) -> dict:
    config = build_config(DEMO_BASE, overrides)
    try:  # resumed (or reported, if finished) unless `restart`
        metrics = run_experiment(config, Path(run_dir), progress=progress, position=position, restart=restart)
    except (Interrupted, KeyboardInterrupt):
        parent = multiprocessing.parent_process()
        if parent is not None and not parent.is_alive():
            os._exit(130)  # orphaned (see _stop_with_parent): the checkpoint is written, nobody waits
        raise
    if progress:
        print(f"[demo] {run_dir} done in {metrics['seconds']:.0f}s", flush=True)
    return {k: v for k, v in metrics.items() if k != "history"}


def _stop_with_parent() -> None:
    """Worker initializer (Linux): SIGTERM when the demo process dies, even by SIGKILL, so a worker
    checkpoints and exits (as on Ctrl-C) instead of running on as an orphan."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _run_pool(
    work: list[tuple[list[str], Path]], jobs: int | None, progress: bool, restart: bool
) -> list[dict]:
    """(overrides, run directory) items in worker processes, on the quick profile; metrics in order.

    Validates every config before starting any work; items start in the order given.
    """
    jobs = jobs or max(1, min(2, os.cpu_count() or 1))
    if jobs > 1:  # one thread per worker (the user's overrides still win)
        work = [(["threads=1", *overrides], run_dir) for overrides, run_dir in work]
    for overrides, _ in work:
        build_config(DEMO_BASE, overrides)
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=jobs, mp_context=context, initializer=_stop_with_parent) as pool:
        futures = [
            pool.submit(_run_one, overrides, str(run_dir), i % jobs, progress, restart)
            for i, (overrides, run_dir) in enumerate(work)
        ]
        return [future.result() for future in futures]


def run_seeds(
    out_dir: str | Path,
    seeds: dict[int, tuple[str, ...]],
    overrides: list[str] | None = None,
    progress: bool = True,
    jobs: int | None = None,
    restart: bool = False,
    runs: dict[str, list[str]] = DEMO_RUNS,
) -> dict[int, dict[str, dict]]:
    """The runs named in `seeds` (seed -> run names, from `runs`: the demo's unless given), in one
    pool of worker processes.

    Runs go to OUT/seedS/NAME; returns {seed: {name: metrics}}. Runs start in `runs`' order (the
    demo's longest first, so the workers finish together).
    """
    out = Path(out_dir)
    keys = [(seed, name) for name in runs for seed, names in seeds.items() if name in names]
    work = [
        ([*(overrides or []), f"seed={seed}", *runs[name]], out / f"seed{seed}" / name) for seed, name in keys
    ]
    done = dict(zip(keys, _run_pool(work, jobs, progress, restart), strict=True))
    return {seed: {name: done[seed, name] for name in names} for seed, names in seeds.items()}


def run_demo(
    out_dir: str | Path,
    overrides: list[str] | None = None,
    progress: bool = True,
    jobs: int | None = None,
    restart: bool = False,
) -> dict:
    """Four runs with the `quick` profile (plus overrides); writes summary.json. They run on the CPU
    unless an override says otherwise, so the table is the published one with a GPU visible too."""
    out = Path(out_dir)
    work = [(["device=cpu", *(overrides or []), *DEMO_RUNS[name]], out / name) for name in DEMO_RUNS]
    results = dict(zip(DEMO_RUNS, _run_pool(work, jobs, progress, restart), strict=True))
    summary = {name: results[name] for name in TABLE_ORDER}
    write_json(out / "summary.json", summary)
    return summary
