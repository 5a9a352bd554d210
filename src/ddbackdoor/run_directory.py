"""A run's directory: its layout, what may already be there when a run starts (a finished run, one
to resume, another run's files), and the files a run writes, each atomically."""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import yaml

from .artifacts import append_jsonl, image_grid, save_png, save_tensors, write_json, write_text
from .checkpoint import checkpoint_dir, list_checkpoints
from .config import ExperimentConfig
from .config_build import to_yaml
from .data import RealData
from .distill import SyntheticSet
from .errors import UserError
from .generated_trigger import GeneratedTrigger
from .identity import resume_differences
from .reproducible import recorded
from .triggers import Trigger

log = logging.getLogger("ddbackdoor")

# what a restart removes besides the checkpoints (MTT's experts are the run's own, not data)
RUN_OUTPUTS = ("metrics.json", "history.jsonl", "experts.safetensors")


class RunDirectory:
    """The files of one run: config.yaml, metrics.json, history.jsonl, synthetic.safetensors and
    its pictures, run.log, checkpoints/."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.config_file = self.path / "config.yaml"
        self.metrics_file = self.path / "metrics.json"
        self.history_file = self.path / "history.jsonl"

    def existing_result(self, config: ExperimentConfig, restart: bool) -> dict | None:
        """The metrics of this run if the directory already holds it finished; None if it is to
        be run (fresh, or resumed from its checkpoints). Another run's directory is one line."""
        if restart:
            shutil.rmtree(checkpoint_dir(self.path), ignore_errors=True)
            for name in RUN_OUTPUTS:
                (self.path / name).unlink(missing_ok=True)
            return None
        if not self.config_file.exists():
            if list_checkpoints(self.path) or self.metrics_file.exists():
                raise UserError(f"run directory {self.path} has no config.yaml; pass --restart to start over")
            return None
        try:
            old = yaml.safe_load(self.config_file.read_text()) or {}
        except yaml.YAMLError:
            raise UserError(f"{self.config_file} is not valid YAML; pass --restart to start over") from None
        old.pop("provenance", None)
        changed = resume_differences(old, config)  # the spec's keys only
        if changed:
            raise UserError(
                f"run directory {self.path} holds a run with another config (first difference: "
                f"{changed[0]}); pass --restart to replace it, or choose another --out"
            )
        if not self.metrics_file.exists():
            return None
        try:
            return json.loads(self.metrics_file.read_text())
        except json.JSONDecodeError:
            raise UserError(f"{self.metrics_file} is damaged; pass --restart to run again") from None

    def with_recorded_mode(self, config: ExperimentConfig) -> ExperimentConfig:
        """`config`, in the reproducible mode the directory's run began in when `config` leaves the
        mode to the default: the same command resumes an older run as what it was."""
        if "reproducible" in config.model_fields_set or not recorded(self.path):
            return config
        return config.model_copy(update={"reproducible": True})

    def write_config(self, config: ExperimentConfig, provenance: dict) -> None:
        write_text(self.config_file, to_yaml(config, {"provenance": provenance}))

    def append_history(self, record: dict) -> None:
        append_jsonl(self.history_file, record)

    def rewind_history(self, evaluations: list[dict], iteration: int) -> None:
        """history.jsonl as it was right after `iteration`: the checkpoint's evaluations plus the
        file's attack records up to that iteration (later ones belong to iterations being redone);
        a fresh run starts with none."""
        records: list[dict] = []
        if self.history_file.exists():
            for line in self.history_file.read_text().splitlines():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut short by a crash
                if record.get("kind") == "trigger_update" and (record.get("iteration") or 0) <= iteration:
                    records.append(record)
        records += [{"kind": "evaluation", **r} for r in evaluations]
        records.sort(key=lambda r: (r.get("iteration") or 0, r["kind"] == "evaluation"))
        write_text(self.history_file, "".join(json.dumps(r) + "\n" for r in records))

    def save_results(
        self,
        config: ExperimentConfig,
        synthetic: SyntheticSet,
        trigger: Trigger,
        train: RealData,
        metrics: dict,
    ) -> None:
        """The synthetic set with its trigger (safetensors, SHA-256), its pictures, metrics.json."""
        tensors = {
            "images": synthetic.images,
            "labels": synthetic.labels,
            "trigger_pattern": trigger.pattern,
            "trigger_mask": trigger.mask,
        }
        if synthetic.lrs is not None:
            tensors["lrs"] = synthetic.lrs
        tensors.update({f"extra.{name}": value for name, value in synthetic.extras.items()})
        generated = isinstance(trigger, GeneratedTrigger)
        if generated:
            tensors.update(trigger.saved_tensors())
        metadata = {
            "space": "normalised",
            "mean": list(train.mean),
            "std": list(train.std),
            "dataset": config.dataset,
            "distill": config.distill,
            "attack": config.attack,
            "ipc": config.ipc,
            "target": trigger.target,
            "trigger_clip": trigger.clip,
            "trigger_additive": trigger.additive,
            "trigger_opacity": trigger.opacity,
            "seed": config.seed,
            **(trigger.saved_meta() if generated else {}),
        }
        save_tensors(self.path / "synthetic.safetensors", tensors, metadata)
        pixels = train.denormalize(synthetic.images.detach().cpu())
        save_png(self.path / "synthetic.png", image_grid(pixels, rows=train.num_classes))
        save_png(self.path / "trigger.png", image_grid(trigger.pattern.unsqueeze(0).cpu(), rows=1, scale=8))
        write_json(self.metrics_file, metrics)

    @contextmanager
    def logging(self) -> Iterator[None]:
        """run.log in the directory, for as long as the run is open."""
        self.path.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(self.path / "run.log", mode="a")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        try:
            yield
        finally:
            log.removeHandler(handler)
            handler.close()
