"""One experiment end to end: data -> attack -> distiller -> victims -> run directory."""

from __future__ import annotations

import logging
import platform
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from . import __version__
from .artifacts import append_jsonl, image_grid, save_png, save_tensors, write_json, write_text
from .attacks import ATTACKS, PatchAttack
from .config import ExperimentConfig, network_options, to_yaml
from .data import RealData, load_dataset
from .distill import DISTILLERS, RealPool, SyntheticSet
from .errors import UserError
from .evaluate import EvalSets, evaluate
from .models import create_model

log = logging.getLogger("ddbackdoor")


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


class Experiment:
    """Holds the pieces of one run; `execute` does it and writes the run directory."""

    def __init__(
        self, config: ExperimentConfig, out_dir: str | Path, progress: bool = True, position: int = 0
    ):
        self.config = config
        self.out = Path(out_dir)
        self.progress = progress
        self.position = position
        self.device = resolve_device(config.device)
        self.history: list[dict] = []

    def setup(self) -> None:
        cfg = self.config
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        torch.manual_seed(cfg.seed)
        self.generator = torch.Generator().manual_seed(cfg.seed)
        self.train, self.test = load_dataset(
            cfg.dataset, cfg.data.root, cfg.data.image_size, cfg.data.download
        )
        self.pool = RealPool(
            self.train.normalize(self.train.images).to(self.device),
            self.train.labels.clone().to(self.device),
            self.train.num_classes,
        )
        self.attack: PatchAttack = ATTACKS[cfg.attack](cfg, self.train, self.generator)
        self.make_net = model_factory(cfg, self.train, self.device)
        self.distiller = DISTILLERS[cfg.distill](
            cfg, lambda: self.make_net(cfg.network), progress=self.progress
        )

    def evaluate(self, iteration: int, synthetic: SyntheticSet) -> dict:
        cfg = self.config
        started = time.perf_counter()
        tests = EvalSets.build(self.test, self.attack.trigger, self.device)
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
        record = {"iteration": iteration, **{k: metrics[k] for k in ("cta", "asr", "asr_all")}}
        self.history.append(record)
        append_jsonl(self.out / "history.jsonl", record)
        log.info(
            "iteration %d: CTA %.4f +- %.4f, ASR %.4f +- %.4f",
            iteration,
            metrics["cta"]["mean"],
            metrics["cta"]["std"],
            metrics["asr"]["mean"],
            metrics["asr"]["std"],
        )
        return metrics

    def execute(self, overwrite: bool = False) -> dict:
        """Run everything and write the run directory; returns metrics.json's content."""
        cfg = self.config
        started = time.perf_counter()
        if (self.out / "metrics.json").exists() and not overwrite:
            raise UserError(
                f"run directory {self.out} already holds a finished run; "
                "choose another --out or pass --overwrite to replace it"
            )
        self.setup()  # data and networks first: a bad dataset leaves no half-made run directory
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "history.jsonl").unlink(missing_ok=True)
        handler = logging.FileHandler(self.out / "run.log", mode="w")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        try:
            write_text(self.out / "config.yaml", to_yaml(cfg, {"provenance": provenance(self.device)}))
            log.info("run %s: %s / %s / %s, ipc %d", self.out, cfg.dataset, cfg.distill, cfg.attack, cfg.ipc)
            self.attack.prepare(self.pool)
            hooks = [self.attack, PeriodicEvaluation(self)]
            distill_started = time.perf_counter()
            synthetic = self.distiller.run(self.pool, hooks, self.generator)
            distill_seconds = time.perf_counter() - distill_started
            metrics = self.evaluate(cfg.iterations, synthetic)
            metrics.update(
                {
                    "seconds": time.perf_counter() - started,
                    "distill_seconds": distill_seconds,
                    "attack": {"name": cfg.attack, **self.attack.summary()},
                    "history": self.history,
                }
            )
            self.save(synthetic, metrics)
            return metrics
        finally:
            log.removeHandler(handler)
            handler.close()

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
            "seed": cfg.seed,
        }
        save_tensors(self.out / "synthetic.safetensors", tensors, metadata)
        pixels = self.train.denormalize(synthetic.images.detach().cpu())
        save_png(self.out / "synthetic.png", image_grid(pixels, rows=self.train.num_classes))
        save_png(self.out / "trigger.png", image_grid(trigger.pattern.unsqueeze(0).cpu(), rows=1, scale=8))
        write_json(self.out / "metrics.json", metrics)


def run_experiment(
    config: ExperimentConfig,
    out_dir: str | Path,
    progress: bool = True,
    position: int = 0,
    overwrite: bool = False,
) -> dict:
    """The Python API behind `ddbackdoor run`; `position` places its progress bars.

    A directory that already holds a finished run is refused unless `overwrite`.
    """
    return Experiment(config, out_dir, progress, position).execute(overwrite)
