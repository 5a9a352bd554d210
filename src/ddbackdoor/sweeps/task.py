"""One sweep run as a child process: `ddbackdoor run` (then `defend`), whatever engine calls it.

A plain picklable function, so Ray can ship it to another machine; the child process keeps each
run's kernels, threads and signals exactly as when typed by hand.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

INTERRUPTED = 130  # `ddbackdoor run` after SIGINT/SIGTERM and a checkpoint


@dataclass(frozen=True)
class RunTask:
    run_id: str
    config_file: Path
    run_dir: Path
    log_file: Path
    defenses: str | None = None
    # CPU threads of a run that leaves `threads` at 0 (the executor's share of the machine; 0:
    # torch's choice): runs of a sweep then compute alike whichever engine starts them
    threads: int = 0


def _command(*args: str) -> list[str]:
    return [sys.executable, "-m", "ddbackdoor", *args]


def _last_line(log_file: Path) -> str:
    try:
        lines = [line for line in log_file.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    return lines[-1].strip()[:300] if lines else ""


def _child(args: list[str], log_file: Path, should_stop: Callable[[], bool], threads: int = 0) -> int:
    """Run a child in its own session (a terminal's Ctrl-C reaches only the sweep, which forwards
    one SIGTERM: the child checkpoints instead of seeing two signals and aborting)."""
    env = {
        **os.environ,
        **({"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)} if threads else {}),
    }
    with log_file.open("a") as log:
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env)
        try:
            while True:
                try:
                    return proc.wait(timeout=0.5)
                except subprocess.TimeoutExpired:
                    if should_stop():
                        proc.send_signal(signal.SIGTERM)
                        return proc.wait()
        except BaseException:  # KeyboardInterrupt in the sweep, or Ray cancelling the task
            proc.send_signal(signal.SIGTERM)
            proc.wait()
            raise


def execute(task: RunTask, should_stop: Callable[[], bool] = lambda: False) -> tuple[str, str]:
    """(status, error line): finished, interrupted or failed; never raises for a failed run."""
    task.log_file.parent.mkdir(parents=True, exist_ok=True)
    if should_stop():
        return "pending", ""
    try:
        code = _child(
            _command("run", str(task.config_file), "--out", str(task.run_dir), "--quiet"),
            task.log_file,
            should_stop,
            task.threads,
        )
    except KeyboardInterrupt:
        return "interrupted", ""
    if code == INTERRUPTED:
        return "interrupted", ""
    if code != 0:
        return "failed", _last_line(task.log_file) or f"exit status {code}"
    if task.defenses:
        code = _child(
            _command("defend", str(task.run_dir), "--defense", task.defenses, "--quiet"),
            task.log_file,
            should_stop,
        )
        if code != 0:
            return "finished", f"defenses: {_last_line(task.log_file) or f'exit status {code}'}"
    return "finished", ""
