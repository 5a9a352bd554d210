"""The scanner's signals: each measures one thing per class of a synthetic set, using that set alone.

A signal's value per class is read relative to the set's own median class (so a set that is
harder or easier as a whole does not look suspicious), then compared with what that class looks
like in clean sets (the calibration's reference): a backdoored target class is expected to stand
out in at least one of them.

- `reversed_trigger`: Neural Cleanse's smallest mask that sends the other classes' synthetic images
  to the class, on networks trained on the set (several seeds, median L1 norm, read on its log).
  A planted trigger makes the target's mask small.
- `leave_class_out`: a network trained on every other class predicts the class's images; the
  entropy of those predictions. A clean class looks like one or two neighbours (a T-shirt like a
  shirt); a target class built from relabelled images of many classes (SEEDED) looks like many.
- `out_of_range`: the mean distance of the class's pixels outside [0, 1]. Unclipped triggers
  (DOORPING as released, Poisoned Distillation's value-10 patch) push the target's pixels far out.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from pydantic import Field, field_validator
from torch import nn

from ..defenses.base import Options, fine_tune, predict
from ..defenses.neural_cleanse import NeuralCleanseOptions, reverse_engineer
from ..models import create_model
from .source import ScanInput


class ScanOptions(Options):
    """How the scanner trains its networks; the defaults are what its calibration was measured with."""

    seed: int = Field(0, ge=0)
    models: int = Field(3, ge=1)  # networks (seeds) behind the reversed-trigger signal
    epochs: int = Field(60, ge=1)  # training epochs of every network on the set
    lr: float = Field(0.01, gt=0)
    batch: int = Field(32, ge=1)
    width: int = Field(
        16, ge=1
    )  # ConvNet width (depth 3, instance norm: the DC benchmark's net at half width)
    trigger_epochs: int = Field(30, ge=1)  # Neural Cleanse epochs over the other classes' images
    signals: tuple[str, ...] = ("reversed_trigger", "leave_class_out", "out_of_range")

    @field_validator("signals", mode="before")
    @classmethod
    def _split(cls, names: object) -> object:
        return tuple(n.strip() for n in names.split(",")) if isinstance(names, str) else names

    @field_validator("signals")
    @classmethod
    def _known(cls, names: tuple[str, ...]) -> tuple[str, ...]:
        unknown = [n for n in names if n not in SIGNALS]
        if unknown or not names:
            raise ValueError(
                f"unknown signal {unknown[0] if unknown else '(none)'}; accepted: {', '.join(SIGNALS)}"
            )
        return names


@dataclass
class Signal:
    """One signal's measurement per class, with what it saw (predictions, masks) as evidence."""

    name: str
    values: list[float]
    evidence: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Scoring:
    """How a signal's values are compared: `log` or not, which side is suspicious, and the smallest
    spread assumed for a class across clean sets (a few clean sets can agree by chance)."""

    log: bool
    larger_is_suspicious: bool
    floor: float


def relative(values: list[float], present: np.ndarray, scoring: Scoring) -> np.ndarray:
    """Each class's value minus the set's median class (on the log where the scoring says so)."""
    v = np.asarray(values, dtype=float)
    if scoring.log:
        v = np.log(np.maximum(v, 1e-6))
    return np.where(present, v - np.median(v[present]), 0.0)


class ScanContext:
    """The set, its normaliser and the networks trained on it (shared between signals)."""

    def __init__(self, found: ScanInput, opts: ScanOptions, progress: Callable | None = None):
        self.found = found
        self.opts = opts
        self.progress = progress or (lambda _message: None)
        clipped = found.pixels.clamp(0, 1)
        self.mean = clipped.mean(dim=(0, 2, 3)).view(1, -1, 1, 1)
        self.std = clipped.std(dim=(0, 2, 3)).clamp_min(1e-3).view(1, -1, 1, 1)
        self.present = np.array([n > 0 for n in found.per_class])
        self._full_models: list[nn.Module] | None = None

    def normalise(self, pixels: torch.Tensor) -> torch.Tensor:
        return (pixels - self.mean) / self.std

    def train(self, keep: torch.Tensor, seed: int) -> nn.Module:
        """A fresh ConvNet trained on the rows `keep` of the set, from `seed` alone."""
        found, opts = self.found, self.opts
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            channels, size = found.pixels.shape[1], found.pixels.shape[-1]
            net = create_model("convnet", channels, found.num_classes, size, width=opts.width)
        images = self.normalise(found.pixels[keep])
        generator = torch.Generator().manual_seed(seed)
        return fine_tune(net, images, found.labels[keep], opts.epochs, opts.lr, opts.batch, generator)

    def full_models(self) -> list[nn.Module]:
        if self._full_models is None:
            every = torch.ones_like(self.found.labels, dtype=torch.bool)
            self._full_models = []
            for k in range(self.opts.models):
                self.progress(f"training network {k + 1}/{self.opts.models} on the set")
                self._full_models.append(self.train(every, self.opts.seed * 1000 + k))
        return self._full_models


def reversed_trigger(ctx: ScanContext) -> Signal:
    found, opts = ctx.found, ctx.opts
    nc = NeuralCleanseOptions(epochs=opts.trigger_epochs, batch=32)
    norms = np.full((opts.models, found.num_classes), np.nan)
    best: dict[int, dict] = {}
    for k, net in enumerate(ctx.full_models()):
        net.eval()
        for p in net.parameters():
            p.requires_grad_(False)
        for target in np.flatnonzero(ctx.present):
            ctx.progress(f"reversing a trigger for class {target} (network {k + 1}/{opts.models})")
            others = found.pixels[found.labels != int(target)]
            generator = torch.Generator().manual_seed(opts.seed * 1000 + 100 * k + int(target))
            reversed_ = reverse_engineer(net, others, int(target), ctx.normalise, nc, generator)
            norms[k, target] = reversed_["norm"]
            if k == 0:
                best[int(target)] = reversed_
    median = np.nan_to_num(np.median(norms, axis=0), nan=1.0)
    return Signal("reversed_trigger", median.tolist(), {"norm_per_network": norms.tolist(), "masks": best})


def leave_class_out(ctx: ScanContext) -> Signal:
    found = ctx.found
    entropy = np.zeros(found.num_classes)
    spread: dict[int, list[int]] = {}
    for c in np.flatnonzero(ctx.present):
        ctx.progress(f"training a network without class {c}")
        net = ctx.train(found.labels != int(c), ctx.opts.seed * 1000 + 500 + int(c))
        predicted = predict(net, ctx.normalise(found.pixels[found.labels == int(c)]), 512)
        counts = torch.bincount(predicted.cpu(), minlength=found.num_classes).double()
        share = counts[counts > 0] / counts.sum()
        entropy[c] = float(-(share * share.log()).sum()) / math.log(max(2, int(ctx.present.sum()) - 1))
        spread[int(c)] = counts.long().tolist()
    return Signal("leave_class_out", entropy.tolist(), {"predicted_as": spread})


def out_of_range(ctx: ScanContext) -> Signal:
    found = ctx.found
    excess = (found.pixels - found.pixels.clamp(0, 1)).abs()
    distance = np.zeros(found.num_classes)
    share = np.zeros(found.num_classes)
    for c in np.flatnonzero(ctx.present):
        rows = excess[found.labels == int(c)]
        distance[c] = float(rows.mean())
        share[c] = float((rows > 1 / 255).float().mean())
    return Signal("out_of_range", distance.tolist(), {"share_outside": share.tolist()})


SIGNALS: dict[str, Callable[[ScanContext], Signal]] = {
    "reversed_trigger": reversed_trigger,
    "leave_class_out": leave_class_out,
    "out_of_range": out_of_range,
}

SCORING: dict[str, Scoring] = {
    "reversed_trigger": Scoring(log=True, larger_is_suspicious=False, floor=0.05),
    "leave_class_out": Scoring(log=False, larger_is_suspicious=True, floor=0.05),
    "out_of_range": Scoring(log=False, larger_is_suspicious=True, floor=0.005),
}
