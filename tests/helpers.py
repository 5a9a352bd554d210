"""Small hand-made data and networks shared by the tests."""

import contextlib
from collections.abc import Iterator
from pathlib import Path

import torch
from threadpoolctl import threadpool_limits
from torch import nn

from ddbackdoor.artifacts import load_tensors
from ddbackdoor.data import RealData
from ddbackdoor.distill.pool import RealPool
from ddbackdoor.reproducible import pinned_kernels
from ddbackdoor.resolve import build_config


@contextlib.contextmanager
def host_independent_kernels() -> Iterator[None]:
    """One thread and reproducible mode's kernels (oneDNN and NNPACK off).

    Why: a threshold measured on one host must hold on every host. With oneDNN's convolutions,
    whose order of summation follows the host's caches, NAD's BadNets result was 10.6 points of
    CTA lost here and within 10 on a CI host, which turned a strict expected failure into a failure.
    """
    with pinned_kernels(True, 1), threadpool_limits(1):
        yield


def tiny_data(n_per_class: int = 20, classes: int = 4, size: int = 16, seed: int = 0) -> RealData:
    gen = torch.Generator().manual_seed(seed)
    labels = torch.arange(classes).repeat_interleave(n_per_class)
    images = torch.rand(labels.numel(), 1, size, size, generator=gen) * 0.5
    return RealData(images, labels, classes, (0.3,), (0.4,), "tiny")


def pool_of(data: RealData) -> RealPool:
    return RealPool(data.normalize(data.images), data.labels.clone(), data.num_classes)


def tiny_config(*overrides: str):
    return build_config({"profile": "smoke"}, ["data.image_size=16", *overrides])


def prepared_seeded(*overrides: str):
    """A SEEDED attack with poison portion 0.1 prepared on a tiny pool: (data, pool, attack)."""
    from ddbackdoor.attacks import ATTACKS

    data = tiny_data(n_per_class=50)
    pool = pool_of(data)
    config = tiny_config("attack=seeded", "poison.portion=0.1", *overrides)
    attack = ATTACKS["seeded"](config, data, torch.Generator().manual_seed(0))
    attack.prepare(pool)
    return data, pool, attack


class PatchReader(nn.Module):
    """Logits = target class iff the bottom-right 2x2 patch is bright: an ideal backdoored model."""

    def __init__(self, target: int, classes: int, mean: float, std: float):
        super().__init__()
        self.target, self.classes, self.mean, self.std = target, classes, mean, std
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pixels = x * self.std + self.mean
        size = x.shape[-1]
        bright = pixels[:, :, size - 3 : size - 1, size - 3 : size - 1].mean(dim=(1, 2, 3)) > 0.95
        # clean prediction: class = index of the brightest quarter of the image rows
        logits = torch.zeros(x.shape[0], self.classes)
        logits[torch.arange(x.shape[0]), self.clean_guess(pixels)] = 1.0
        logits[bright] = 0.0
        logits[bright, self.target] = 1.0
        return logits

    def clean_guess(self, pixels: torch.Tensor) -> torch.Tensor:
        return pixels[:, 0, 0, 0].mul(self.classes).long().clamp(0, self.classes - 1)


def victims_of(results: dict, name: str, key: str = "asr") -> list[float]:
    """Every victim's value of run `name` over the seeds of `run_seeds` results that ran it."""
    return [v for runs in results.values() if name in runs for v in runs[name][key]["values"]]


def trigger_pixels(out: Path, seed: int, name: str) -> torch.Tensor:
    """The stamped trigger values of run OUT/seedS/NAME (inside its mask)."""
    tensors, _ = load_tensors(out / f"seed{seed}" / name / "synthetic.safetensors")
    return tensors["trigger_pattern"][tensors["trigger_mask"].expand_as(tensors["trigger_pattern"]) > 0]


def stop_after_first_iteration(config, out: Path, monkeypatch) -> None:
    """Run `config` into `out` and stop it with a SIGINT after iteration 1 (handled: the iteration
    finishes, a checkpoint is written, the run raises Interrupted), as a pre-empted job would."""
    import os
    import signal

    import pytest

    from ddbackdoor import experiment
    from ddbackdoor.errors import Interrupted

    hook = experiment.PeriodicEvaluation.on_iteration

    def interrupt_after_first(self, iteration, synthetic):
        if iteration == 1:
            os.kill(os.getpid(), signal.SIGINT)
        hook(self, iteration, synthetic)

    with monkeypatch.context() as patch:
        patch.setattr(experiment.PeriodicEvaluation, "on_iteration", interrupt_after_first)
        with pytest.raises(Interrupted, match=f"after iteration 1/{config.iterations}"):
            experiment.run_experiment(config, out, progress=False)
