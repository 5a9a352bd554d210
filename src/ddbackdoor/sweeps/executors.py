"""Engines that run a sweep's tasks: a local process pool, or Ray (one machine or a cluster).

Both call `task.execute` for each run and report each result as it arrives; a stop request
(SIGINT/SIGTERM to the sweep) lets running runs checkpoint and starts no new ones.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field, replace

from ..errors import UserError
from .task import RunTask, execute

Done = Callable[[RunTask, str, str], None]  # (task, status, error line)


@dataclass
class LocalExecutor:
    """`jobs` child processes at a time on this machine; a run that leaves `threads` at 0 gets
    its share of the cores (one in reproducible mode, whatever `threads` says)."""

    jobs: int = 1
    address: str | None = None
    gpus_per_run: float = 0.0
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self, tasks: Sequence[RunTask], done: Done) -> None:
        share = max(1, (os.cpu_count() or 1) // max(1, self.jobs))
        with ThreadPoolExecutor(max_workers=max(1, self.jobs)) as pool:
            futures = {
                pool.submit(execute, replace(task, threads=share), self.stop.is_set): task for task in tasks
            }
            pending = set(futures)
            while pending:
                finished, pending = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
                for future in finished:
                    status, error = future.result()
                    done(futures[future], status, error)


@dataclass
class RayExecutor:
    """Each run is a Ray task declaring 1 CPU and `gpus_per_run` GPUs, on the cluster at
    `address` (`auto`: the one this machine belongs to) or a local Ray started for the sweep."""

    jobs: int = 1
    address: str | None = None
    gpus_per_run: float = 0.0
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self, tasks: Sequence[RunTask], done: Done) -> None:
        try:
            import ray
        except ImportError:
            raise UserError(
                "--executor ray needs Ray: pip install 'ddbackdoor[sweep]' (or pip install ray)"
            ) from None
        started_here = not ray.is_initialized()
        if started_here:
            if self.address:
                ray.init(address=self.address, log_to_driver=False)
            else:
                ray.init(num_cpus=max(1, self.jobs), include_dashboard=False, log_to_driver=False)
        try:
            remote = ray.remote(num_cpus=1, num_gpus=self.gpus_per_run, max_retries=0)(execute)
            refs = {remote.remote(replace(task, threads=1)): task for task in tasks}  # its one CPU
            pending = list(refs)
            cancelled = False
            while pending:
                if self.stop.is_set() and not cancelled:
                    for ref in pending:  # running tasks get KeyboardInterrupt: their run checkpoints
                        ray.cancel(ref)
                    cancelled = True
                finished, pending = ray.wait(pending, num_returns=1, timeout=0.5)
                for ref in finished:
                    try:
                        status, error = ray.get(ref)
                    except (ray.exceptions.TaskCancelledError, ray.exceptions.RayTaskError):
                        status, error = ("interrupted" if cancelled else "failed"), ""
                    done(refs[ref], status, error)
        finally:
            if started_here:
                ray.shutdown()


EXECUTORS: dict[str, type[LocalExecutor] | type[RayExecutor]] = {
    "local": LocalExecutor,
    "ray": RayExecutor,
}
