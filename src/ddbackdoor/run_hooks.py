"""The hooks a run gives its distiller besides the attack: periodic evaluation, the attack's log,
and checkpoints. Each gets only the callbacks it needs, never the run itself."""

from __future__ import annotations

import signal
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .distill import SyntheticSet
from .errors import Interrupted


@dataclass
class PeriodicEvaluation:
    """Evaluate the synthetic set every `every` iterations (0: never; the last one is the run's own
    final evaluation)."""

    every: int
    last: int
    evaluate: Callable[[int, SyntheticSet], object]

    def on_iteration(self, iteration: int, synthetic: SyntheticSet) -> None:
        if self.every and iteration % self.every == 0 and iteration != self.last:
            self.evaluate(iteration, synthetic)


@dataclass
class AttackLog:
    """What the attack did during the iteration (each DOORPING update, say) as `trigger_update`
    lines of history.jsonl."""

    take_records: Callable[[], list[dict]]
    append: Callable[[dict], None]

    def on_iteration(self, iteration: int, synthetic: SyntheticSet) -> None:
        for record in self.take_records():
            self.append({"kind": "trigger_update", **record})


@dataclass
class Checkpointer:
    """The last hook: a checkpoint every `every` iterations and after the last; on a stop request
    (`stop_signal()` set by SIGINT/SIGTERM) one more, then the run stops with exit status 130."""

    every: int
    last: int
    write: Callable[[], None]
    stop_signal: Callable[[], int | None]
    where: Path

    def on_iteration(self, iteration: int, synthetic: SyntheticSet) -> None:
        stop = self.stop_signal()
        due = iteration == self.last or (self.every and iteration % self.every == 0)
        if due or stop is not None:
            self.write()
        if stop is not None:
            raise Interrupted(
                f"stopped by {signal.Signals(stop).name} after iteration {iteration}/{self.last}; "
                f"checkpoint written to {self.where}; run the same command again to resume"
            )
