"""Victim evaluation: train fresh networks on a synthetic set, measure CTA and ASR.

ASR comes in two definitions (SPEC 1): `asr` over triggered test images whose
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


@dataclass
class EvalSets:
    """Normalised clean and triggered test tensors, computed once per trigger."""

    clean: torch.Tensor
    triggered: torch.Tensor
    labels: torch.Tensor
    target: int

    @classmethod
    def build(cls, test: RealData, trigger: Trigger, device: torch.device | str) -> EvalSets:
        images = test.images.to(device)
        with torch.no_grad():
            clean = test.normalize(images)
            triggered = test.normalize(trigger.to(device).stamp(images))
        return cls(clean, triggered, test.labels.to(device), trigger.target)


@torch.inference_mode()
def predict(net: nn.Module, images: torch.Tensor, batch: int) -> torch.Tensor:
    net.eval()
    return torch.cat([net(images[i : i + batch]).argmax(dim=1) for i in range(0, images.shape[0], batch)])


def attack_metrics(net: nn.Module, tests: EvalSets, batch: int = 1024) -> dict[str, float]:
    """CTA on clean images, ASR (non-target images) and ASR-all on triggered ones."""
    clean_pred = predict(net, tests.clean, batch)
    trig_pred = predict(net, tests.triggered, batch)
    hit = trig_pred == tests.target
    non_target = tests.labels != tests.target
    return {
        "cta": float((clean_pred == tests.labels).float().mean()),
        "asr": float(hit[non_target].float().mean()) if non_target.any() else float("nan"),
        "asr_all": float(hit.float().mean()),
    }


def train_victim(
    net: nn.Module, synthetic: SyntheticSet, cfg: EvalConfig, generator: torch.Generator
) -> nn.Module:
    """SGD with momentum and weight decay, learning rate x0.1 at half (SPEC 7)."""
    net.train()
    optimizer = torch.optim.SGD(
        net.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
    )
    images, labels = synthetic.images.detach(), synthetic.labels
    half = cfg.epochs // 2
    train_epochs(net, optimizer, images, labels, half, cfg.batch, generator)
    for group in optimizer.param_groups:
        group["lr"] = cfg.lr * 0.1
    train_epochs(net, optimizer, images, labels, cfg.epochs - half, cfg.batch, generator)
    return net


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
) -> dict:
    """Train cfg.num_victims fresh victims per architecture; per-victim values are kept.

    `train` is the distiller's victim protocol (`Distiller.victim_trainer`); default plain SGD.
    """
    train = train or train_victim
    per_victim: list[dict] = []
    jobs = [(arch, i) for arch in architectures for i in range(cfg.num_victims)]
    for arch, i in tqdm(jobs, desc="victims", disable=not progress, leave=False, position=position):
        victim_seed = seed * 1_000_003 + i
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(victim_seed)
            net = make_victim(arch)
        generator = torch.Generator().manual_seed(victim_seed)
        train(net, synthetic, cfg, generator)
        per_victim.append(
            {"network": arch, "seed": victim_seed, **attack_metrics(net, tests, cfg.test_batch)}
        )
    metrics: dict = {key: summarise([v[key] for v in per_victim]) for key in ("cta", "asr", "asr_all")}
    metrics["per_victim"] = per_victim
    if len(architectures) > 1:
        metrics["by_network"] = {
            arch: {
                key: summarise([v[key] for v in per_victim if v["network"] == arch])
                for key in ("cta", "asr", "asr_all")
            }
            for arch in architectures
        }
    return metrics
