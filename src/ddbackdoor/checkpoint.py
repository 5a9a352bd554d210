"""Checkpoints: the whole state of a run, so a crash or a pre-empted job loses nothing.

A checkpoint holds the distiller's state (synthetic set, optimiser states),
the attack's state (trigger), both random generators and the evaluation
history. Restoring all of it before the next iteration makes a resumed run
end with the same synthetic set, bit for bit on CPU, as an uninterrupted one.

Files are safetensors + JSON metadata with a SHA-256 (see `artifacts`), under
RUN/checkpoints/. A new checkpoint is written atomically (temp file, rename)
and the previous one is deleted only after that, so there is always at least
one complete checkpoint once the first has been written.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .artifacts import load_tensors, save_tensors
from .errors import ArtifactError

log = logging.getLogger("ddbackdoor")

FORMAT = 1
_NAME = re.compile(r"^iter-(\d{6,})\.safetensors$")


@dataclass
class Checkpoint:
    """What `save_checkpoint` writes and `load_latest` returns."""

    iteration: int
    distiller: dict[str, torch.Tensor]
    attack: dict[str, torch.Tensor]
    rng: dict[str, torch.Tensor]
    meta: dict[str, Any]  # distiller/attack metadata, history, config digest


def checkpoint_dir(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints"


def rng_state(generator: torch.Generator, attack: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """The generator's, the attack's own stream's (paired runs) and the global RNG states (CPU,
    and CUDA when present)."""
    state = {"generator": generator.get_state(), "torch": torch.get_rng_state()}
    if attack is not None and attack is not generator:
        state["attack_generator"] = attack.get_state()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for index, cuda_state in enumerate(torch.cuda.get_rng_state_all()):
            state[f"cuda.{index}"] = cuda_state
    return state


def restore_rng(
    state: dict[str, torch.Tensor], generator: torch.Generator, attack: torch.Generator | None = None
) -> None:
    generator.set_state(state["generator"])
    if attack is not None and "attack_generator" in state:
        attack.set_state(state["attack_generator"])
    torch.set_rng_state(state["torch"])
    cuda = [state[f"cuda.{i}"] for i in range(len(state)) if f"cuda.{i}" in state]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)


def _flatten(checkpoint: Checkpoint) -> dict[str, torch.Tensor]:
    tensors: dict[str, torch.Tensor] = {}
    for group in ("distiller", "attack", "rng"):
        for name, tensor in getattr(checkpoint, group).items():
            tensors[f"{group}.{name}"] = tensor
    return tensors


def save_checkpoint(run_dir: Path, checkpoint: Checkpoint) -> Path:
    """Write iter-NNNNNN.safetensors atomically, then remove older checkpoints."""
    folder = checkpoint_dir(run_dir)
    path = folder / f"iter-{checkpoint.iteration:06d}.safetensors"
    meta = {"format": FORMAT, "iteration": checkpoint.iteration, **checkpoint.meta}
    save_tensors(path, _flatten(checkpoint), meta)
    for old in list_checkpoints(run_dir):
        if old != path:
            old.unlink(missing_ok=True)
    return path


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Checkpoint files, newest first."""
    folder = checkpoint_dir(run_dir)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found, reverse=True)]


def load_checkpoint(path: Path) -> Checkpoint:
    tensors, meta = load_tensors(path)  # verifies the SHA-256
    if meta.get("format") != FORMAT or "iteration" not in meta:
        raise ArtifactError(f"checkpoint {path} has an unknown format; rerun with --restart to start over")
    groups: dict[str, dict[str, torch.Tensor]] = {"distiller": {}, "attack": {}, "rng": {}}
    for name, tensor in tensors.items():
        group, _, key = name.partition(".")
        if group not in groups:
            raise ArtifactError(f"checkpoint {path} holds an unexpected tensor {name!r}")
        groups[group][key] = tensor
    if "generator" not in groups["rng"] or "torch" not in groups["rng"]:
        raise ArtifactError(f"checkpoint {path} lacks its random-generator states")
    return Checkpoint(int(meta["iteration"]), groups["distiller"], groups["attack"], groups["rng"], meta)


def load_latest(run_dir: Path) -> Checkpoint | None:
    """The newest checkpoint that verifies; a damaged newer one falls back to an older one."""
    paths = list_checkpoints(run_dir)
    for index, path in enumerate(paths):
        try:
            return load_checkpoint(path)
        except ArtifactError as err:
            if index == len(paths) - 1:
                raise ArtifactError(f"{err}; rerun with --restart to start over") from None
            log.warning("skipping damaged checkpoint %s: %s", path, err)
    return None
