"""A finished run directory, read back and verified: what `defend` and `rescore` start from."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from .artifacts import load_tensors
from .config import ExperimentConfig
from .config_build import read_yaml
from .distill import SyntheticSet
from .errors import ArtifactError
from .generated_trigger import generated_from_saved
from .identity import upgrade
from .resolve import build_config
from .triggers import Trigger

RUN_FILES = ("config.yaml", "synthetic.safetensors", "metrics.json")


@dataclass
class RunInputs:
    """What a finished run directory holds, loaded and verified."""

    config: ExperimentConfig
    synthetic: SyntheticSet
    trigger: Trigger
    metrics: dict


def load_run(run_dir: Path, device: str | None = None) -> RunInputs:
    """Read and check a run directory; anything missing or damaged is one ArtifactError line."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ArtifactError(f"run directory {run_dir} does not exist")
    missing = [name for name in RUN_FILES if not (run_dir / name).is_file()]
    if missing:
        raise ArtifactError(
            f"{run_dir} is not a finished run (missing {', '.join(missing)}); run `ddbackdoor run` first"
        )
    data = read_yaml(run_dir / "config.yaml")
    data.pop("provenance", None)
    # a run written before a key whose default changed behaviour is read as what it ran
    config = build_config(upgrade(data), [f"device={device}"] if device else [])
    tensors, meta = load_tensors(run_dir / "synthetic.safetensors")
    for key in ("images", "labels", "trigger_pattern", "trigger_mask"):
        if key not in tensors:
            raise ArtifactError(f"{run_dir / 'synthetic.safetensors'} lacks tensor {key!r}")
    extras = {k.removeprefix("extra."): v for k, v in tensors.items() if k.startswith("extra.")}
    synthetic = SyntheticSet(tensors["images"], tensors["labels"], tensors.get("lrs"), dict(meta), extras)
    trigger = Trigger(
        tensors["trigger_pattern"],
        tensors["trigger_mask"],
        int(meta.get("target", config.poison.target)),
        bool(meta.get("trigger_clip", config.poison.clip)),
        bool(meta.get("trigger_additive", False)),
        float(meta.get("trigger_opacity", 1.0)),
    )
    if meta.get("trigger_kind") == "generated":
        trigger = generated_from_saved(tensors, meta, trigger, meta.get("mean", []), meta.get("std", []))
    try:
        metrics = json.loads((run_dir / "metrics.json").read_text())
    except (OSError, ValueError) as err:
        raise ArtifactError(
            f"{run_dir / 'metrics.json'} is not readable JSON ({type(err).__name__})"
        ) from None
    return RunInputs(config, synthetic, trigger, metrics)
