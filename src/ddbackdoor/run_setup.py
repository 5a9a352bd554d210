"""What one run is made of before it distils: its data, the pool the distiller reads, the attack
and the distiller, with their random streams; and how networks and devices are made."""

from __future__ import annotations

import platform
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from . import __version__
from .attacks import ATTACKS, PatchAttack, attack_generator
from .config import ExperimentConfig
from .config_build import network_options
from .data import RealData
from .data.splits import RunData, load_run_data
from .distill import DISTILLERS, RealPool
from .distill.base import Distiller
from .finished_run import load_run
from .models import create_model
from .reproducible import kernel_state


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


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


def pixel_range(data: RealData, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The normalised values of pixels 0 and 1, per channel ([1, C, 1, 1] each)."""
    corners = data.normalize(torch.stack([torch.zeros(data.channels, 1, 1), torch.ones(data.channels, 1, 1)]))
    return corners[:1].to(device), corners[1:].to(device)


def make_distiller(
    config: ExperimentConfig, make_net: Callable[[], nn.Module], progress: bool = True, position: int = 0
) -> Distiller:
    """The config's distiller. One that reads a received set's own distiller (`reads_received`:
    distill=rematch, whose victims may train as the received set's do) gets it from the finished
    run named by `data.from_run`."""
    distiller = DISTILLERS[config.distill](config, make_net, progress=progress, position=position)
    if distiller.reads_received and config.data.from_run is not None:
        received = load_run(Path(config.data.from_run)).config
        distiller.received = DISTILLERS[received.distill](received, make_net, progress=False)
    return distiller


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
    """What a run's config.yaml records besides its config: versions, revision, device, kernels."""
    return {
        "ddbackdoor": __version__,
        "torch": str(torch.__version__),
        "python": platform.python_version(),
        "git_revision": git_revision(),
        "device": str(device),
        "threads": torch.get_num_threads(),
        "kernels": kernel_state(),
    }


@dataclass
class RunParts:
    """One run, set up: the distiller reads `pool` (normalised, on `device`), which `attack` poisons;
    `generator` is the run's stream, `attack_generator` the attack's own."""

    data: RunData
    device: torch.device
    pool: RealPool
    generator: torch.Generator
    attack_generator: torch.Generator
    attack: PatchAttack
    distiller: Distiller
    make_net: Callable[[str], nn.Module]


def set_up(config: ExperimentConfig, workdir: Path, progress: bool = True, position: int = 0) -> RunParts:
    """Data (checked), pool, attack and distiller, in the order their random draws need: torch's
    global stream and the run's generator seeded first, the attack built on its own stream."""
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    data = load_run_data(config)
    device = resolve_device(config.device)
    train = data.train
    pool = RealPool(
        train.normalize(train.images).to(device),
        train.labels.clone().to(device),
        train.num_classes,
        paired=config.paired,
        pixel_range=pixel_range(train, device),
    )
    stream = attack_generator(config, generator)
    attack = ATTACKS[config.attack](config, train, stream)
    make_net = model_factory(config, train, device)
    distiller = make_distiller(config, lambda: make_net(config.network), progress, position)
    distiller.workdir = workdir  # where a distiller keeps files of its own (MTT's experts)
    return RunParts(data, device, pool, generator, stream, attack, distiller, make_net)
