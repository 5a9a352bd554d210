"""One experiment end to end: data -> attack -> distiller -> victims -> run directory."""

from __future__ import annotations

import contextlib
import json
import logging
import platform
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from pydantic import ValidationError
from torch import nn

from . import __version__
from .allocator import retained_heap
from .artifacts import append_jsonl, image_grid, save_png, save_tensors, write_json, write_text
from .attacks import ATTACKS, PatchAttack, attack_generator
from .checkpoint import (
    Checkpoint,
    checkpoint_dir,
    list_checkpoints,
    load_latest,
    restore_rng,
    rng_state,
    save_checkpoint,
)
from .config import ExperimentConfig, fill_earlier_defaults, idle_keys, network_options, to_yaml
from .data import RealData, load_dataset
from .data.from_run import synthetic_as_train
from .data.realdata import check_data
from .distill import DISTILLERS, RealPool, SyntheticSet
from .errors import DataError, Interrupted, NumericalError, UserError
from .evaluate import EvalSets, evaluate
from .models import create_model
from .reproducible import kernel_state, pinned_kernels
from .stealth import stealth_metrics
from .stop_signals import on_stop_signals
from .tensorboard_log import TensorBoardLog

log = logging.getLogger("ddbackdoor")

# stealth metrics are means over this many test images (enough for 3 digits; SSIM in float64 on
# all 10,000 CIFAR images would take gigabytes)
STEALTH_IMAGES = 1000


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def git_revision() -> str:
    """The revision of the checkout this package runs from, or 'unknown'."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 else "unknown"


def provenance(device: torch.device) -> dict:
    return {
        "ddbackdoor": __version__,
        "torch": str(torch.__version__),
        "python": platform.python_version(),
        "git_revision": git_revision(),
        "device": str(device),
        "threads": torch.get_num_threads(),
        "kernels": kernel_state(),
    }


def model_factory(
    config: ExperimentConfig, data: RealData, device: torch.device
) -> Callable[[str], nn.Module]:
    """Fresh networks by name, shaped for `data`, on `device`."""

    def make(name: str) -> nn.Module:
        net = create_model(
            name, data.channels, data.num_classes, data.image_size, **network_options(config, name)
        )
        return net.to(device)

    return make


@dataclass
class PeriodicEvaluation:
    """A distiller hook: evaluate the synthetic set every `every` iterations."""

    run: Experiment

    def on_iteration(self, iteration: int, synthetic: SyntheticSet) -> None:
        every = self.run.config.eval.every
        if every and iteration % every == 0 and iteration != self.run.config.iterations:
            self.run.evaluate(iteration, synthetic)


@dataclass
class AttackLog:
    """A distiller hook: what the attack did during the iteration (e.g. each DOORPING update) as
    `trigger_update` lines of history.jsonl."""

    run: Experiment

    def on_iteration(self, iteration: int, synthetic: SyntheticSet) -> None:
        for record in self.run.attack.take_records():
            append_jsonl(self.run.out / "history.jsonl", {"kind": "trigger_update", **record})


def history_lines(path: Path, evaluations: list[dict], iteration: int) -> str:
    """history.jsonl as it was right after `iteration`: the checkpoint's evaluations plus the
    file's attack records up to that iteration (later ones belong to iterations being redone)."""
    records: list[dict] = []
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut short by a crash
            if record.get("kind") == "trigger_update" and (record.get("iteration") or 0) <= iteration:
                records.append(record)
    records += [{"kind": "evaluation", **r} for r in evaluations]
    records.sort(key=lambda r: (r.get("iteration") or 0, r["kind"] == "evaluation"))
    return "".join(json.dumps(r) + "\n" for r in records)


@dataclass
class Checkpointer:
    """The last hook of a run: checkpoint every K iterations and at the end; honour a stop request."""

    run: Experiment

    def on_iteration(self, iteration: int, synthetic: SyntheticSet) -> None:
        run = self.run
        every, total = run.config.checkpoint.every, run.config.iterations
        due = iteration == total or (every and iteration % every == 0)
        if due or run.stop_signal is not None:
            run.write_checkpoint()
        if run.stop_signal is not None:
            name = signal.Signals(run.stop_signal).name
            raise Interrupted(
                f"stopped by {name} after iteration {iteration}/{total}; checkpoint written to "
                f"{checkpoint_dir(run.out)}; run the same command again to resume"
            )


def with_new_defaults(old: dict, schema: type[ExperimentConfig] = ExperimentConfig) -> dict:
    """A config.yaml written by an earlier version, with the keys added since at their defaults
    (new sections default to the old behaviour; a key whose default changed behaviour at what it
    meant then, config.DEFAULT_CHANGES), so a run resumes across versions; a file the current
    schema (with the run's plugin sections) rejects is compared as it is, and the difference is
    reported."""
    try:
        return schema.model_validate(fill_earlier_defaults(old)).model_dump(mode="json")
    except ValidationError:
        return old


def config_differences(
    old: dict, new: dict, prefix: str = "", ignore: frozenset[str] = frozenset()
) -> list[str]:
    """Dotted keys whose values differ between two resolved configs, but for those in `ignore`."""
    keys = sorted(set(old) | set(new))
    out: list[str] = []
    for key in keys:
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += config_differences(a, b, f"{prefix}{key}.", ignore)
        elif a != b and f"{prefix}{key}" not in ignore:
            out.append(f"{prefix}{key} ({a!r} there, {b!r} now)")
    return out


class Experiment:
    """Holds the pieces of one run; `execute` does it (or resumes it) and writes the run directory."""

    def __init__(
        self, config: ExperimentConfig, out_dir: str | Path, progress: bool = True, position: int = 0
    ):
        self.config = config
        self.out = Path(out_dir)
        self.progress = progress
        self.position = position
        self.device = resolve_device(config.device)
        self.history: list[dict] = []
        self.stop_signal: int | None = None
        self.checkpointed = 0
        self.phase = "setup"
        self.resumed_from: int | None = None
        self.tensorboard: TensorBoardLog | None = None

    def setup(self) -> None:
        cfg = self.config
        torch.manual_seed(cfg.seed)
        self.generator = torch.Generator().manual_seed(cfg.seed)
        self.train, self.test = load_dataset(
            cfg.dataset, cfg.data.root, cfg.data.image_size, cfg.data.download
        )
        if cfg.data.from_run is not None:  # the attacker sees a distilled set, no real image
            self.train = synthetic_as_train(cfg.data.from_run, self.train, cfg.dataset)
        for data, split in ((self.train, "train"), (self.test, "test")):
            try:
                check_data(data, split)
            except ValueError as err:
                raise DataError(f"{err}; check the dataset files") from None
        self.pool = RealPool(
            self.train.normalize(self.train.images).to(self.device),
            self.train.labels.clone().to(self.device),
            self.train.num_classes,
            paired=cfg.paired,
        )
        self.attack_generator = attack_generator(cfg, self.generator)
        self.attack: PatchAttack = ATTACKS[cfg.attack](cfg, self.train, self.attack_generator)
        self.make_net = model_factory(cfg, self.train, self.device)
        self.distiller = DISTILLERS[cfg.distill](
            cfg, lambda: self.make_net(cfg.network), progress=self.progress, position=self.position
        )
        self.distiller.workdir = self.out  # where a distiller keeps files of its own (MTT's experts)

    def evaluate(self, iteration: int, synthetic: SyntheticSet) -> dict:
        cfg = self.config
        started = time.perf_counter()
        tests = EvalSets.build(self.test, self.attack.trigger, self.device, cfg.eval.source_class)
        victims = cfg.eval.victims or [cfg.network]
        metrics = evaluate(
            synthetic,
            tests,
            self.make_net,
            victims,
            cfg.eval,
            cfg.seed,
            self.progress,
            self.position,
            self.distiller.victim_trainer(),
        )
        metrics["iteration"] = iteration
        metrics["eval_seconds"] = time.perf_counter() - started
        record = {"iteration": iteration, **{k: metrics[k] for k in tests.scores}}
        self.history.append(record)
        append_jsonl(self.out / "history.jsonl", {"kind": "evaluation", **record})
        log.info(
            "iteration %d: CTA %.4f +- %.4f, ASR %.4f +- %.4f",
            iteration,
            metrics["cta"]["mean"],
            metrics["cta"]["std"],
            metrics["asr"]["mean"],
            metrics["asr"]["std"],
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
        checkpoint = Checkpoint(
            iteration,
            distiller_tensors,
            attack_tensors,
            rng_state(self.generator, self.attack_generator),
            meta,
        )
        save_checkpoint(self.out, checkpoint)
        self.checkpointed = iteration

    def resume_from(self, checkpoint: Checkpoint) -> None:
        """Put every piece back as it was right after the checkpointed iteration."""
        meta = checkpoint.meta
        self.distiller.load_state(checkpoint.distiller, meta["distiller"], self.device)
        self.attack.load_state(checkpoint.attack, meta["attack"], self.pool)
        self.history = list(meta["history"])
        history = self.out / "history.jsonl"
        write_text(history, history_lines(history, self.history, checkpoint.iteration))
        restore_rng(checkpoint.rng, self.generator, self.attack_generator)
        self.checkpointed = checkpoint.iteration
        log.info("resumed %s from iteration %d", self.out, checkpoint.iteration)

    def check_existing(self, restart: bool) -> dict | None:
        """Prepare the run directory; returns the metrics of a run that already finished."""
        if restart:
            shutil.rmtree(checkpoint_dir(self.out), ignore_errors=True)
            for name in ("metrics.json", "history.jsonl", "experts.safetensors"):
                (self.out / name).unlink(missing_ok=True)
            return None
        config_file = self.out / "config.yaml"
        if not config_file.exists():
            if list_checkpoints(self.out) or (self.out / "metrics.json").exists():
                raise UserError(f"run directory {self.out} has no config.yaml; pass --restart to start over")
            return None
        try:
            old = yaml.safe_load(config_file.read_text()) or {}
        except yaml.YAMLError:
            raise UserError(f"{config_file} is not valid YAML; pass --restart to start over") from None
        old.pop("provenance", None)
        new = self.config.model_dump(mode="json")  # a key that changes nothing here may differ
        changed = config_differences(with_new_defaults(old, type(self.config)), new, ignore=idle_keys(new))
        if changed:
            raise UserError(
                f"run directory {self.out} holds a run with another config (first difference: "
                f"{changed[0]}); pass --restart to replace it, or choose another --out"
            )
        metrics_file = self.out / "metrics.json"
        if metrics_file.exists():
            try:
                return json.loads(metrics_file.read_text())
            except json.JSONDecodeError:
                raise UserError(f"{metrics_file} is damaged; pass --restart to run again") from None
        return None

    def stop_requests(self) -> contextlib.AbstractContextManager[None]:
        """SIGINT/SIGTERM finish the current iteration, checkpoint, and stop; a second one aborts."""
        return stop_requests([self])

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
            with self.stop_requests():
                self.phase = "distill"
                synthetic = self.run_distiller(self.hooks(), resumed=resumed)
                self.phase = "evaluate"
                return self.finish(synthetic, started, time.perf_counter() - distill_started)

    @contextmanager
    def logging(self) -> Iterator[None]:
        """run.log in the run directory, for as long as the run is open."""
        self.out.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(self.out / "run.log", mode="a")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        try:
            yield
        finally:
            log.removeHandler(handler)
            handler.close()

    def begin(self) -> bool:
        """After `setup`: record the config, poison the pool, resume; True when resumed."""
        cfg = self.config
        self.phase = "setup"
        checkpoint = load_latest(self.out)
        write_text(self.out / "config.yaml", to_yaml(cfg, {"provenance": provenance(self.device)}))
        log.info("run %s: %s / %s / %s, ipc %d", self.out, cfg.dataset, cfg.distill, cfg.attack, cfg.ipc)
        self.attack.prepare(self.pool)
        if checkpoint is not None:
            self.resume_from(checkpoint)
        else:
            (self.out / "history.jsonl").unlink(missing_ok=True)
        self.resumed_from = None if checkpoint is None else checkpoint.iteration
        return checkpoint is not None

    def hooks(self) -> list:
        """What the distiller calls: the attack, its log, periodic evaluation, TensorBoard (when
        asked), then checkpoints (last)."""
        if self.config.log.tensorboard:
            self.tensorboard = TensorBoardLog(self.out / "tensorboard", self.history)
        extra = [self.tensorboard] if self.tensorboard is not None else []
        return [self.attack, AttackLog(self), PeriodicEvaluation(self), *extra, Checkpointer(self)]

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
        self.save(synthetic, metrics)
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

    def save(self, synthetic: SyntheticSet, metrics: dict) -> None:
        cfg = self.config
        trigger = self.attack.trigger
        tensors = {
            "images": synthetic.images,
            "labels": synthetic.labels,
            "trigger_pattern": trigger.pattern,
            "trigger_mask": trigger.mask,
        }
        if synthetic.lrs is not None:
            tensors["lrs"] = synthetic.lrs
        tensors.update({f"extra.{name}": value for name, value in synthetic.extras.items()})
        metadata = {
            "space": "normalised",
            "mean": list(self.train.mean),
            "std": list(self.train.std),
            "dataset": cfg.dataset,
            "distill": cfg.distill,
            "attack": cfg.attack,
            "ipc": cfg.ipc,
            "target": trigger.target,
            "trigger_clip": trigger.clip,
            "trigger_additive": trigger.additive,
            "trigger_opacity": trigger.opacity,
            "seed": cfg.seed,
        }
        save_tensors(self.out / "synthetic.safetensors", tensors, metadata)
        pixels = self.train.denormalize(synthetic.images.detach().cpu())
        save_png(self.out / "synthetic.png", image_grid(pixels, rows=self.train.num_classes))
        save_png(self.out / "trigger.png", image_grid(trigger.pattern.unsqueeze(0).cpu(), rows=1, scale=8))
        write_json(self.out / "metrics.json", metrics)


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
    with retained_heap(config.retain_freed_memory), pinned_kernels(config.reproducible, config.threads):
        return Experiment(config, out_dir, progress, position).execute(restart)
