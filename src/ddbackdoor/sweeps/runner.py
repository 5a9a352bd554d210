"""`ddbackdoor sweep`: expand the sweep file, skip finished runs, hand the rest to an engine,
and keep DIR/results.csv current after every run (a killed sweep loses no finished row)."""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml
from tqdm import tqdm

from ..artifacts import write_text
from ..config_build import to_yaml
from ..errors import UserError, unknown_name
from ..stop_signals import on_stop_signals
from .executors import EXECUTORS
from .results import RESULT_COLUMNS, read_results, result_row, write_results
from .spec import SweepRun, expand, load_sweep
from .task import RunTask


def _task(out: Path, run: SweepRun, defenses: str | None) -> RunTask:
    config_file = out / "configs" / f"{run.id}.yaml"
    write_text(config_file, to_yaml(run.config))
    return RunTask(run.id, config_file, out / "runs" / run.id, out / "logs" / f"{run.id}.log", defenses)


def resolved(config: dict[str, Any], key: str) -> Any:
    """A config mapping's value of a dotted key (`poison.trigger_size`); None if it has none."""
    value: Any = config
    for part in key.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def _filled(row: dict[str, Any], keys: list[str], out: Path) -> dict[str, Any]:
    """Another sweep's row with the swept keys it lacks read from its run's config.yaml."""
    missing = [key for key in keys if row.get(key) in (None, "")]
    config_file = out / row["run_dir"] / "config.yaml"
    if not missing or not config_file.exists():
        return row
    config = yaml.safe_load(config_file.read_text()) or {}
    return {**row, **{key: resolved(config, key) for key in missing}}


def _other_sweeps_rows(out: Path, ours: set[str]) -> tuple[list[dict[str, Any]], list[str]]:
    """Rows that other sweep files wrote into the same directory (kept after this sweep's rows, so
    one directory can collect several sweeps, e.g. a clean baseline and the attack grid)."""
    if not (out / "results.csv").exists():
        return [], []
    previous = read_results(out)
    others = [row for row in previous if row["id"] not in ours and (out / row["run_dir"]).exists()]
    return others, [key for key in (previous[0] if previous else {}) if key not in RESULT_COLUMNS]


@contextmanager
def _stop_on_signal(stop: threading.Event) -> Iterator[None]:
    """First SIGINT/SIGTERM: running runs checkpoint and stop, no new run starts; second: abort."""

    def handler(signum: int, frame: object) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        print(
            f"\nddbackdoor: {signal.Signals(signum).name} received: running runs write a checkpoint "
            "and stop; run the same command again to continue",
            file=sys.stderr,
        )

    with on_stop_signals(handler):
        yield


def plan_sweep(
    sweep_file: str | Path, overrides: list[str] | None = None, out: str | Path | None = None
) -> list[tuple[SweepRun, str]]:
    """The runs a sweep would make, with overrides applied, and each one's state in `out`
    (finished, started, or new; "new" everywhere without `out`): `sweep --dry-run`."""
    runs = expand(*load_sweep(sweep_file, overrides))
    states = []
    for run in runs:
        run_dir = None if out is None else Path(out) / "runs" / run.id
        state = "new"
        if run_dir is not None and (run_dir / "metrics.json").exists():
            state = "finished"
        elif run_dir is not None and run_dir.exists():
            state = "started"
        states.append((run, state))
    return states


def format_plan(plan: list[tuple[SweepRun, str]], overrides: list[str] | None = None) -> str:
    """One line per run: its state, id, swept values and the resolved value of every command-line
    override (so a dry run shows them applied), then a count."""
    keys = [item.split("=", 1)[0] for item in overrides or []]
    lines = []
    for run, state in plan:
        config = run.config.model_dump(mode="json")
        values = {**run.overrides, **{key: resolved(config, key) for key in keys}}
        lines.append(f"{state:<9} {run.id:<60} " + " ".join(f"{k}={v}" for k, v in values.items()))
    counts = {s: sum(state == s for _, state in plan) for s in ("new", "started", "finished")}
    lines.append(f"{len(plan)} runs: " + ", ".join(f"{n} {s}" for s, n in counts.items() if n))
    return "\n".join(lines)


def run_sweep(
    sweep_file: str | Path,
    out: str | Path,
    executor: str = "local",
    jobs: int = 1,
    address: str | None = None,
    gpus_per_run: float = 0.0,
    progress: bool = True,
    overrides: list[str] | None = None,
) -> list[dict[str, Any]]:
    """Every run of the sweep under DIR/runs/ID; returns the rows of DIR/results.csv. `overrides`
    (`key=value`) apply to every run and are recorded in each run's config."""
    if executor not in EXECUTORS:
        raise unknown_name("executor", executor, list(EXECUTORS))
    if jobs < 1:
        raise UserError(f"--jobs must be at least 1 (got {jobs})")
    out = Path(out)
    spec, base = load_sweep(sweep_file, overrides)
    runs = expand(spec, base)
    write_text(out / "sweep-files" / Path(sweep_file).name, Path(sweep_file).read_text())  # what ran
    # the attack is always a column (a clean baseline sweep may sweep only seeds)
    swept = list(dict.fromkeys(["attack", *(key for run in runs for key in run.overrides)]))
    others, other_keys = _other_sweeps_rows(out, {run.id for run in runs})
    swept += [key for key in other_keys if key not in swept]
    # every row holds the resolved value of every swept key (this sweep's and the others' in the
    # directory), not only the ones its own cell set
    overrides = {
        run.id: {key: resolved(run.config.model_dump(mode="json"), key) for key in swept} for run in runs
    }
    others = [_filled(row, swept, out) for row in others]
    rows: dict[str, dict[str, Any]] = {}
    todo: list[RunTask] = []
    for run in runs:
        task = _task(out, run, spec.defenses)
        finished = (task.run_dir / "metrics.json").exists()
        rows[run.id] = result_row(
            run.id, overrides[run.id], task.run_dir, "finished" if finished else "pending"
        )
        if not finished:
            todo.append(task)
    write_results(out, [*rows.values(), *others], swept)
    bar = tqdm(total=len(runs), initial=len(runs) - len(todo), desc="sweep", unit="run", disable=not progress)
    engine = EXECUTORS[executor](jobs=jobs, address=address, gpus_per_run=gpus_per_run)

    def done(task: RunTask, status: str, error: str) -> None:
        if status == "interrupted" and not task.run_dir.exists():
            status = "pending"  # cancelled before it started
        rows[task.run_id] = result_row(task.run_id, overrides[task.run_id], task.run_dir, status, error)
        write_results(out, [*rows.values(), *others], swept)
        if status in ("finished", "failed"):
            bar.update()
        failed = sum(row["status"] == "failed" for row in rows.values())
        bar.set_postfix_str(f"{failed} failed" if failed else "")

    try:
        with _stop_on_signal(engine.stop):
            engine.run(todo, done)
    finally:
        bar.close()
    return list(rows.values())
