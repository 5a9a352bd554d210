"""Neural Cleanse (Wang et al., S&P 2019): reverse-engineer a trigger per class, flag outliers, unlearn.

For each class, a mask m and pattern p (pixel space, tanh-parametrised as in
the authors' visualizer) are optimised so that x' = (1 - m) x + m p is
classified as that class, with cost * |m|_1 added. The cost follows the
authors' schedule: start at `init_cost`; after `patience` epochs in a row
with attack success >= 0.99 multiply it by 1.5, after `patience` epochs
below divide it by 1.5 ** 1.5 (their code's down multiplier); keep the
smallest-norm mask that reached 0.99; stop early once the best norm has not
improved for 5 * patience epochs after the cost moved both ways.

A class is flagged when its L1 norm lies below the median and its anomaly
index |norm - median| / (1.4826 * MAD) exceeds 2. Mitigation is their
unlearning: fine-tune on the clean set where 20% of the images carry a
reversed trigger (of a flagged class) but keep their true labels.

Scale deviations (CPU budget): `epochs` defaults to 40 (theirs: up to 1000
with early stopping), over the defender's clean set instead of 1,000 images.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn
from tqdm.auto import tqdm

from ..artifacts import image_grid
from ..evaluate import attack_metrics
from .base import Defense, DefenseData, Options, fine_tune, working_copy

CONSISTENCY = 1.4826  # makes the MAD a consistent estimator of the std for normal data
TANH_EPS = 1e-7


class NeuralCleanseOptions(Options):
    init_cost: float = Field(1e-3, gt=0)
    lr: float = Field(0.1, gt=0)
    epochs: int = Field(40, ge=1)
    batch: int = Field(32, ge=1)
    patience: int = Field(5, ge=1)
    cost_multiplier: float = Field(1.5, gt=1)
    success_threshold: float = Field(0.99, gt=0, le=1)
    anomaly_threshold: float = Field(2.0, gt=0)
    unlearn_fraction: float = Field(0.2, ge=0, le=1)
    unlearn_epochs: int = Field(20, ge=0)
    unlearn_lr: float = Field(0.01, gt=0)


def anomaly_index(norms: list[float] | np.ndarray) -> np.ndarray:
    """|x - median| / (1.4826 * MAD) for every value (MAD = median absolute deviation)."""
    values = np.asarray(norms, dtype=float)
    median = np.median(values)
    mad = CONSISTENCY * np.median(np.abs(values - median))
    if mad == 0:
        return np.where(values == median, 0.0, np.inf)
    return np.abs(values - median) / mad


def flagged_classes(norms: list[float] | np.ndarray, threshold: float = 2.0) -> list[int]:
    """Classes whose norm is abnormally small: below the median and anomaly index > threshold."""
    values = np.asarray(norms, dtype=float)
    index = anomaly_index(values)
    return [int(c) for c in np.flatnonzero((values < np.median(values)) & (index > threshold))]


def to_tanh_space(x: torch.Tensor) -> torch.Tensor:
    return torch.atanh((x - 0.5) * (2 - TANH_EPS))


def from_tanh_space(x: torch.Tensor) -> torch.Tensor:
    return torch.tanh(x) / (2 - TANH_EPS) + 0.5


class CostSchedule:
    """The authors' adaptive cost: x m after `patience` successful epochs, / m**1.5 after failing ones."""

    def __init__(self, opts: NeuralCleanseOptions):
        self.opts = opts
        self.cost = opts.init_cost
        self.up = self.down = 0
        self.moved_up = self.moved_down = False

    def update(self, success: float) -> None:
        opts = self.opts
        if success >= opts.success_threshold:
            self.up, self.down = self.up + 1, 0
        else:
            self.up, self.down = 0, self.down + 1
        if self.up >= opts.patience:
            self.up, self.cost, self.moved_up = 0, self.cost * opts.cost_multiplier, True
        elif self.down >= opts.patience:
            self.down, self.cost, self.moved_down = 0, self.cost / opts.cost_multiplier**1.5, True


def reverse_engineer(
    net: nn.Module,
    pixels: torch.Tensor,
    target: int,
    normalise: Callable[[torch.Tensor], torch.Tensor],
    opts: NeuralCleanseOptions,
    generator: torch.Generator,
) -> dict:
    """The smallest mask (and its pattern) that sends clean images (`pixels`) to `target`;
    `normalise` maps pixels to the network's input (the scanner uses it without a DefenseData)."""
    c, h, w = pixels.shape[1:]
    mask_init = torch.rand(1, h, w, generator=generator).to(pixels.device)
    pattern_init = torch.rand(c, h, w, generator=generator).to(pixels.device)
    mask_t = to_tanh_space(mask_init).requires_grad_(True)
    pattern_t = to_tanh_space(pattern_init).requires_grad_(True)
    optimizer = torch.optim.Adam([mask_t, pattern_t], lr=opts.lr, betas=(0.5, 0.9))
    schedule = CostSchedule(opts)
    best = {"norm": math.inf, "mask": mask_init, "pattern": pattern_init, "success": 0.0}
    stale, best_seen = 0, math.inf
    labels = torch.full((opts.batch,), target, device=pixels.device)
    for _epoch in range(opts.epochs):
        perm = torch.randperm(pixels.shape[0], generator=generator).to(pixels.device)
        hits = seen = 0
        norms = []
        for start in range(0, pixels.shape[0], opts.batch):
            x = pixels[perm[start : start + opts.batch]]
            mask, pattern = from_tanh_space(mask_t), from_tanh_space(pattern_t)
            logits = net(normalise((1 - mask) * x + mask * pattern))
            norm = mask.sum()
            loss = F.cross_entropy(logits, labels[: x.shape[0]]) + schedule.cost * norm
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            hits += int((logits.argmax(1) == target).sum())
            seen += x.shape[0]
            norms.append(float(norm.detach()))
        success, norm = hits / seen, float(np.mean(norms))
        if success >= opts.success_threshold and norm < best["norm"]:
            with torch.no_grad():
                best = {
                    "norm": norm,
                    "mask": from_tanh_space(mask_t).detach().clone(),
                    "pattern": from_tanh_space(pattern_t).detach().clone(),
                    "success": success,
                }
        if math.isfinite(best["norm"]):
            stale = stale + 1 if best["norm"] >= best_seen else 0
        best_seen = min(best_seen, best["norm"])
        if schedule.moved_up and schedule.moved_down and stale >= 5 * opts.patience:
            break
        schedule.update(success)
    if math.isinf(best["norm"]):  # never reached the threshold: report the last mask, marked as such
        with torch.no_grad():
            mask = from_tanh_space(mask_t).detach()
            best = {
                "norm": float(mask.sum()),
                "mask": mask,
                "pattern": from_tanh_space(pattern_t).detach(),
                "success": success,
            }
        best["reached_threshold"] = False
    else:
        best["reached_threshold"] = True
    best["final_cost"] = schedule.cost
    return best


def unlearn(
    net: nn.Module,
    data: DefenseData,
    triggers: list[dict],
    opts: NeuralCleanseOptions,
    generator: torch.Generator,
) -> nn.Module:
    """Fine-tune on the clean set, `unlearn_fraction` of it carrying reversed triggers, labels kept."""
    images, labels = data.clean.images.clone(), data.clean.labels
    count = round(opts.unlearn_fraction * images.shape[0])
    chosen = torch.randperm(images.shape[0], generator=generator)[:count].to(images.device)
    for part, trigger in zip(chosen.tensor_split(len(triggers)), triggers, strict=True):
        mask, pattern = trigger["mask"], trigger["pattern"]
        images[part] = data.to_normalised((1 - mask) * data.to_pixels(images[part]) + mask * pattern)
    return fine_tune(
        net, images, labels, opts.unlearn_epochs, opts.unlearn_lr, opts.batch, generator, desc="unlearn"
    )


def run(model: nn.Module, data: DefenseData, opts: NeuralCleanseOptions, generator: torch.Generator) -> dict:
    net = working_copy(model).eval()
    for p in net.parameters():
        p.requires_grad_(False)
    pixels = data.to_pixels(data.clean.images)
    found = []
    for target in tqdm(
        range(data.num_classes), desc="neural cleanse", disable=not data.progress, leave=False
    ):
        found.append(reverse_engineer(net, pixels, target, data.to_normalised, opts, generator))
    norms = [f["norm"] for f in found]
    index = anomaly_index(norms)
    flagged = flagged_classes(norms, opts.anomaly_threshold)
    for p in net.parameters():
        p.requires_grad_(True)
    before = attack_metrics(net, data.tests)
    result: dict = {
        "l1_norms": norms,
        "anomaly_index": [float(x) for x in index],
        "reached_success_threshold": [f["reached_threshold"] for f in found],
        "flagged_classes": flagged,
        "detected": bool(flagged),
        "true_target": data.tests.target,
        "target_flagged": data.tests.target in flagged,
        "target_anomaly_index": float(index[data.tests.target]),
        "before": before,
    }
    if flagged and opts.unlearn_epochs > 0:
        unlearn(net, data, [found[c] for c in flagged], opts, generator)
        result["after"] = attack_metrics(net, data.tests)
        result["mitigation"] = f"unlearned the reversed triggers of classes {flagged}"
    else:
        result["after"] = before
        result["mitigation"] = "none: no class flagged" if not flagged else "none: unlearn_epochs=0"
    result["pictures"] = {"reversed_triggers": reversed_picture(found)}
    return result


def reversed_picture(found: list[dict]):
    """Row 1: masks; row 2: mask * pattern, per class (pixel space)."""
    masks = torch.stack([f["mask"].expand_as(f["pattern"]) for f in found]).cpu()
    stamped = torch.stack([f["mask"] * f["pattern"] for f in found]).cpu()
    return image_grid(torch.cat([masks, stamped]), rows=2, scale=3)


DEFENSE = Defense(
    "neural_cleanse",
    "model",
    NeuralCleanseOptions,
    run,
    description="Neural Cleanse (Wang et al. 2019): reverse-engineer triggers, flag outliers, unlearn",
)
