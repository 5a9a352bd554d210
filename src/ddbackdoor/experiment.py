"""One experiment end to end: data -> attack -> distiller -> victims -> run directory.

The parts live apart: the run directory (ddbackdoor.run_directory), what a run is made of
(ddbackdoor.run_setup), the distiller's hooks (ddbackdoor.run_hooks), checkpoints
(ddbackdoor.checkpoint) and evaluation (ddbackdoor.evaluate). `Experiment` puts them in order,
and `run_experiment` is the Python API behind `ddbackdoor run`.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from .allocator import retained_heap
from .checkpoint import (
    Checkpoint,
    checkpoint_dir,
    list_checkpoints,
    load_latest,
    restore_rng,
    rng_state,
    save_checkpoint,
)
from .config import ExperimentConfig
from .distill import SyntheticSet
from .errors import NumericalError
from .evaluate import EvalSets, evaluate
from .reproducible import pinned_kernels, resolved_threads
from .run_directory import RunDirectory
from .run_hooks import AttackLog, Checkpointer, PeriodicEvaluation
from .run_setup import model_factory, provenance, resolve_device, set_up
from .stealth import stealth_metrics
from .stop_signals import on_stop_signals
from .tensorboard_log import TensorBoardLog

__all__ = ["Experiment", "model_factory", "resolve_device", "run_experiment", "stop_requests"]

log = logging.getLogger("ddbackdoor")

# stealth metrics are means over this many test images (enough for 3 digits; SSIM in float64 on
# all 10,000 CIFAR images would take gigabytes)
STEALTH_IMAGES = 1000


class Experiment:
    """Holds the pieces of one run; `execute` does it (or resumes it) and writes the run directory."""

    def __init__(
        self, config: ExperimentConfig, out_dir: str | Path, progress: bool = True, position: int = 0
    ):
        self.config = config
        self.out = Path(out_dir)
        self.directory = RunDirectory(self.out)
        self.progress = progress
        self.position = position
        self.history: list[dict] = []
        self.stop_signal: int | None = None
        self.checkpointed = 0
        self.phase = "setup"
        self.resumed_from: int | None = None
        self.tensorboard: TensorBoardLog | None = None

    def setup(self) -> None:
        """Data, pool, attack and distiller (ddbackdoor.run_setup)."""
        parts = set_up(self.config, self.out, self.progress, self.position)
        self.parts = parts
        self.device, self.pool, self.generator = parts.device, parts.pool, parts.generator
        self.attack, self.distiller, self.make_net = parts.attack, parts.distiller, parts.make_net
        self.train, self.test = parts.data.train, parts.data.test

    def check_existing(self, restart: bool) -> dict | None:
        """Prepare the run directory; returns the metrics of a run that already finished."""
        return self.directory.existing_result(self.config, restart)

    def logging(self) -> contextlib.AbstractContextManager[None]:
        return self.directory.logging()

    # -- evaluation ----------------------------------------------------------------------
    def evaluate(self, iteration: int, synthetic: SyntheticSet) -> dict:
        """Victims trained on `synthetic`, scored on the test set (and the validation set, if the
        run holds one out); one `evaluation` line of history.jsonl."""
        cfg = self.config
        started = time.perf_counter()
        trigger = self.attack.trigger
        tests = EvalSets.build(self.test, trigger, self.device, cfg.eval.source_class)
        held = self.parts.data.validation
        validation = (
            None if held is None else EvalSets.build(held, trigger, self.device, cfg.eval.source_class)
        )
        metrics = evaluate(
            synthetic,
            tests,
            self.make_net,
            cfg.eval.victims or [cfg.network],
            cfg.eval,
            cfg.seed,
            self.progress,
            self.position,
            self.distiller.victim_trainer(),
            validation,
        )
        metrics["iteration"] = iteration
        metrics["eval_seconds"] = time.perf_counter() - started
        record = {"iteration": iteration, **{k: metrics[k] for k in tests.scores}}
        if validation is not None:
            record["validation"] = metrics["validation"]
        self.history.append(record)
        self.directory.append_history({"kind": "evaluation", **record})
        cta, asr = metrics["cta"], metrics["asr"]
        log.info(
            "iteration %d: CTA %.4f +- %.4f, ASR %.4f +- %.4f",
            iteration,
            cta["mean"],
            cta["std"],
            asr["mean"],
            asr["std"],
        )
        return metrics

    # -- checkpoints ---------------------------------------------------------------------
    def write_checkpoint(self) -> None:
        iteration = self.distiller.iteration
        if iteration == self.checkpointed:
            return
        if not bool(torch.isfinite(self.attack.trigger.pattern).all()):
            raise NumericalError(f"the trigger holds NaN or inf after iteration {iteration}")
        distiller_tensors, distiller_meta = self.distiller.state()
        attack_tensors, attack_meta = self.attack.state()
        meta = {
            "distiller": distiller_meta,
            "attack": attack_meta,
            "history": self.history,
            "config": self.config.model_dump(mode="json"),
        }
        rng = rng_state(self.generator, self.parts.attack_generator)
        save_checkpoint(self.out, Checkpoint(iteration, distiller_tensors, attack_tensors, rng, meta))
        self.checkpointed = iteration

    def resume_from(self, checkpoint: Checkpoint) -> None:
        """Put every piece back as it was right after the checkpointed iteration."""
        meta = checkpoint.meta
        self.distiller.load_state(checkpoint.distiller, meta["distiller"], self.device)
        self.attack.load_state(checkpoint.attack, meta["attack"], self.pool)
        self.history = list(meta["history"])
        self.directory.rewind_history(self.history, checkpoint.iteration)
        restore_rng(checkpoint.rng, self.generator, self.parts.attack_generator)
        self.checkpointed = checkpoint.iteration
        log.info("resumed %s from iteration %d", self.out, checkpoint.iteration)

    # -- the run -------------------------------------------------------------------------
    def execute(self, restart: bool = False) -> dict:
        """Run, resume or (if finished) just report; returns metrics.json's content."""
        started = time.perf_counter()
        finished = self.check_existing(restart)
        if finished is not None:
            log.info("run directory %s already holds this finished run", self.out)
            return finished
        self.setup()  # data and networks first: a bad dataset leaves no half-made run directory
        with self.logging():
            resumed = self.begin()
            distill_started = time.perf_counter()
            # the final evaluation stays inside: a stop request there aborts with exit 130 (the
            # final checkpoint is written, so a rerun resumes), where SIGTERM would kill the run
            with stop_requests([self]):
                self.phase = "distill"
                synthetic = self.run_distiller(self.hooks(), resumed=resumed)
                self.phase = "evaluate"
                return self.finish(synthetic, started, time.perf_counter() - distill_started)

    def begin(self) -> bool:
        """After `setup`: poison the pool, resume from the newest checkpoint, and only then record
        the config; True when resumed."""
        cfg = self.config
        self.phase = "setup"
        checkpoint = load_latest(self.out)
        log.info("run %s: %s / %s / %s, ipc %d", self.out, cfg.dataset, cfg.distill, cfg.attack, cfg.ipc)
        self.attack.prepare(self.pool)
        if checkpoint is not None:
            self.resume_from(checkpoint)
        else:
            self.directory.history_file.unlink(missing_ok=True)
        self.directory.write_config(cfg, provenance(self.device))
        self.resumed_from = None if checkpoint is None else checkpoint.iteration
        return checkpoint is not None

    def hooks(self) -> list:
        """What the distiller calls: the attack, its log, periodic evaluation, TensorBoard (when
        asked), then checkpoints (last)."""
        cfg = self.config
        if cfg.log.tensorboard:
            self.tensorboard = TensorBoardLog(self.out / "tensorboard", self.history)
        extra = [self.tensorboard] if self.tensorboard is not None else []
        return [
            self.attack,
            AttackLog(self.attack.take_records, self.directory.append_history),
            PeriodicEvaluation(cfg.eval.every, cfg.iterations, self.evaluate),
            *extra,
            Checkpointer(
                cfg.checkpoint.every,
                cfg.iterations,
                self.write_checkpoint,
                lambda: self.stop_signal,
                checkpoint_dir(self.out),
            ),
        ]

    def finish(self, synthetic: SyntheticSet, started: float, distill_seconds: float) -> dict:
        """Evaluate the final synthetic set and write the run's artifacts; returns the metrics."""
        cfg = self.config
        metrics = self.evaluate(cfg.iterations, synthetic)
        metrics.update(
            {
                "seconds": time.perf_counter() - started,
                "distill_seconds": distill_seconds,
                "resumed_from": self.resumed_from,
                "attack": {"name": cfg.attack, **self.attack.summary()},
                "stealth": stealth_metrics(self.attack.trigger, self.test.images[:STEALTH_IMAGES]),
                "history": self.history,
            }
        )
        self.directory.save_results(cfg, synthetic, self.attack.trigger, self.train, metrics)
        if self.tensorboard is not None:
            self.tensorboard.close()
        return metrics

    def run_distiller(self, hooks: list, resumed: bool) -> SyntheticSet:
        try:
            return self.distiller.run(self.pool, hooks, self.generator, resumed=resumed)
        except NumericalError as err:
            kept = list_checkpoints(self.out)
            where = f"the last good checkpoint is {kept[0]}" if kept else "no checkpoint was written yet"
            raise NumericalError(f"{err}; {where}; lower the learning rates or change the seed") from None


@contextmanager
def stop_requests(runs: list[Experiment]) -> Iterator[None]:
    """SIGINT/SIGTERM: every run finishes the current iteration and writes its checkpoint, then
    stops (`Checkpointer`); a second signal, or one outside distillation, aborts at once."""

    def handler(signum: int, frame: object) -> None:
        if any(run.stop_signal is not None for run in runs) or runs[0].phase != "distill":
            raise KeyboardInterrupt
        for run in runs:
            run.stop_signal = signum
        what = "a checkpoint" if len(runs) == 1 else "every run's checkpoint"
        print(
            f"\nddbackdoor: {signal.Signals(signum).name} received: finishing this iteration and "
            f"writing {what} (send it again to abort now)",
            file=sys.stderr,
        )

    with on_stop_signals(handler):
        yield


def run_experiment(
    config: ExperimentConfig,
    out_dir: str | Path,
    progress: bool = True,
    position: int = 0,
    restart: bool = False,
) -> dict:
    """The Python API behind `ddbackdoor run`; `position` places its progress bars.

    An existing run directory with the same config is resumed from its last
    checkpoint (or, if finished, just reported); `restart` starts it over.
    """
    config = RunDirectory(out_dir).with_recorded_mode(config)
    threads = resolved_threads(config.threads, config.reproducible)
    with retained_heap(config.retain_freed_memory), pinned_kernels(config.reproducible, threads):
        return Experiment(config, out_dir, progress, position).execute(restart)
