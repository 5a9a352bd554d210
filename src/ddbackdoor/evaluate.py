"""Victim evaluation: train fresh networks on a synthetic set, measure CTA and ASR.

ASR comes in two definitions: `asr` over triggered test images whose
true class is not the target (standard), and `asr_all` over every test image,
as the authors' code computes it (inflated by about 1/C).

Evaluation draws its randomness from its own seeds (inside `fork_rng`), so
evaluating every K iterations does not change what the distiller produces.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from .config import EvalConfig
from .data import RealData
from .distill.base import SyntheticSet, VictimTrainer
from .distill.dc import train_epochs
from .triggers import Trigger
from .victims import StackedVictims, can_stack, predict_stacked, train_stacked


@dataclass
class EvalSets:
    """Normalised clean and triggered test tensors, computed once per trigger."""

    clean: torch.Tensor
    triggered: torch.Tensor
    labels: torch.Tensor
    target: int
    source: int | None = None  # also score ASR on this class's images only (`asr_source`)

    @classmethod
    def build(
        cls, test: RealData, trigger: Trigger, device: torch.device | str, source: int | None = None
    ) -> EvalSets:
        images = test.images.to(device)
        with torch.no_grad():
            clean = test.normalize(images)
            triggered = test.normalize(trigger.to(device).stamp(images))
        return cls(clean, triggered, test.labels.to(device), trigger.target, source)

    @property
    def scores(self) -> tuple[str, ...]:
        """The metric names each victim gets."""
        return ("cta", "asr", "asr_all") if self.source is None else ("cta", "asr", "asr_all", "asr_source")


@torch.inference_mode()
def predict(net: nn.Module, images: torch.Tensor, batch: int) -> torch.Tensor:
    net.eval()
    return torch.cat([net(images[i : i + batch]).argmax(dim=1) for i in range(0, images.shape[0], batch)])


def attack_metrics(net: nn.Module, tests: EvalSets, batch: int = 1024) -> dict[str, float]:
    """CTA on clean images, ASR (non-target images) and ASR-all on triggered ones."""
    return score(predict(net, tests.clean, batch), predict(net, tests.triggered, batch), tests)


def score(clean_pred: torch.Tensor, trig_pred: torch.Tensor, tests: EvalSets) -> dict[str, float]:
    """The three metrics from one victim's predicted classes."""
    hit = trig_pred == tests.target
    non_target = tests.labels != tests.target
    scores = {
        "cta": float((clean_pred == tests.labels).float().mean()),
        "asr": float(hit[non_target].float().mean()) if non_target.any() else float("nan"),
        "asr_all": float(hit.float().mean()),
    }
    if tests.source is not None:
        source = tests.labels == tests.source
        scores["asr_source"] = float(hit[source].float().mean()) if source.any() else float("nan")
    return scores


def train_victim(
    net: nn.Module,
    synthetic: SyntheticSet,
    cfg: EvalConfig,
    generator: torch.Generator,
    augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None,
) -> nn.Module:
    """SGD with momentum and weight decay, learning rate x0.1 at half.

    `augment` transforms every mini-batch (DSA/DM sets are evaluated with DSA augmentation).
    """
    net.train()
    optimizer = torch.optim.SGD(
        net.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
    )
    images, labels = synthetic.images.detach(), synthetic.labels
    half = cfg.epochs // 2
    train_epochs(net, optimizer, images, labels, half, cfg.batch, generator, augment)
    for group in optimizer.param_groups:
        group["lr"] = cfg.lr * 0.1
    train_epochs(net, optimizer, images, labels, cfg.epochs - half, cfg.batch, generator, augment)
    return net


def victim_seeds(seed: int, count: int) -> list[int]:
    """The seeds of a run's victims (per architecture): everything that retrains them uses these."""
    return [seed * 1_000_003 + i for i in range(count)]


def fresh_victim(make_victim: Callable[[str], nn.Module], arch: str, victim_seed: int) -> nn.Module:
    """Victim `victim_seed`'s initial network, without touching the caller's global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(victim_seed)
        return make_victim(arch)


def stacked_scores(
    nets: list[nn.Module], seeds: list[int], synthetic: SyntheticSet, sets: list[EvalSets], cfg: EvalConfig
) -> list[list[dict[str, float]]]:
    """All victims of one architecture trained together (`victims`), same seeds and batch orders;
    each victim's scores on each of `sets`."""
    stacked = StackedVictims(nets)
    generators = [torch.Generator().manual_seed(s) for s in seeds]
    train_stacked(stacked, synthetic.images, synthetic.labels, cfg, generators)
    per_set = []
    for tests in sets:
        clean = predict_stacked(stacked, tests.clean, cfg.test_batch)
        triggered = predict_stacked(stacked, tests.triggered, cfg.test_batch)
        per_set.append([score(c, t, tests) for c, t in zip(clean, triggered, strict=True)])
    return [list(victim) for victim in zip(*per_set, strict=True)]


def victim_record(scores: list[dict[str, float]]) -> dict[str, float]:
    """A victim's test scores, then its validation scores (if any) as `val_<score>`."""
    test, *rest = scores
    return {**test, **{f"val_{k}": v for held in rest for k, v in held.items()}}


def summarise(values: list[float]) -> dict:
    arr = np.asarray(values, dtype=float)
    return {"mean": float(arr.mean()), "std": float(arr.std()), "values": [float(v) for v in values]}


def evaluate(
    synthetic: SyntheticSet,
    tests: EvalSets,
    make_victim: Callable[[str], nn.Module],
    architectures: list[str],
    cfg: EvalConfig,
    seed: int,
    progress: bool = False,
    position: int = 0,
    train: VictimTrainer | None = None,
    validation: EvalSets | None = None,
) -> dict:
    """Train cfg.num_victims fresh victims per architecture; per-victim values are kept.

    `train` is the distiller's victim protocol (`Distiller.victim_trainer`); default plain SGD.
    With `validation`, each victim is also scored there (`val_*` per victim, `validation` summary).
    """
    sets = [tests] if validation is None else [tests, validation]
    stack = cfg.batched is True or (cfg.batched == "auto" and tests.clean.device.type == "cuda")
    stack = stack and train is None  # a distiller's own protocol (augmentation...) runs as is
    train = train or train_victim
    per_victim: list[dict] = []
    bar = tqdm(
        total=len(architectures) * cfg.num_victims,
        desc="victims",
        disable=not progress,
        leave=False,
        position=position,
    )
    for arch in architectures:
        seeds = victim_seeds(seed, cfg.num_victims)
        nets = [fresh_victim(make_victim, arch, s) for s in seeds]
        if stack and can_stack(nets):
            scores = stacked_scores(nets, seeds, synthetic, sets, cfg)
            bar.update(len(nets))
        else:
            scores = []
            for net, victim_seed in zip(nets, seeds, strict=True):
                train(net, synthetic, cfg, torch.Generator().manual_seed(victim_seed))
                scores.append([attack_metrics(net, s, cfg.test_batch) for s in sets])
                bar.update(1)
        per_victim += [
            {"network": arch, "seed": s, **victim_record(m)} for s, m in zip(seeds, scores, strict=True)
        ]
    bar.close()
    metrics: dict = {key: summarise([v[key] for v in per_victim]) for key in tests.scores}
    metrics["per_victim"] = per_victim
    if validation is not None:
        metrics["validation"] = {
            key: summarise([v[f"val_{key}"] for v in per_victim]) for key in validation.scores
        }
    if len(architectures) > 1:
        metrics["by_network"] = {
            arch: {
                key: summarise([v[key] for v in per_victim if v["network"] == arch]) for key in tests.scores
            }
            for arch in architectures
        }
    return metrics
