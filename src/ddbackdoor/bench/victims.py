"""(c) one evaluation of 10 victims: one after another, retained heap, stacked."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ..attacks.doorping import DoorpingAttack
from ..config import EvalConfig
from ..data import RealData
from ..distill.base import SyntheticSet
from ..distill.pool import init_synthetic
from ..evaluate import EvalSets, evaluate
from ..models import create_model
from .measure import (
    compare,
)
from .setup import Bench, in_retained_heap


def bench_victims(b: Bench) -> dict:
    """(c) Ten victims trained and scored: one after another (baseline), the same with the retained
    heap (the default path of `ddbackdoor run`), and stacked; all must give the same accuracies."""
    s, pool = b.scale, b.pool()
    images, labels = init_synthetic(pool, 10, "real", b.generator())
    synthetic = SyntheticSet(images, labels)
    attack = DoorpingAttack(b.config(), b.train, b.generator())
    test = b.test
    if s.test_images is not None:
        keep = torch.randperm(len(test.labels), generator=b.generator())[: s.test_images]
        test = RealData(
            test.images[keep], test.labels[keep], test.num_classes, test.mean, test.std, test.name
        )
    tests = EvalSets.build(test, attack.trigger, b.device)
    sequential = EvalConfig(num_victims=10, epochs=s.victim_epochs, batched=False)
    stacked = sequential.model_copy(update={"batched": True})

    def make(name: str) -> nn.Module:
        shape = (b.train.channels, b.train.num_classes, b.train.image_size)
        return create_model(name, *shape, width=s.victim_width).to(b.device)

    outputs: dict[str, dict] = {}

    def run(name: str, c: EvalConfig) -> Callable[[], None]:
        def go() -> None:
            outputs[name] = evaluate(synthetic, tests, make, ["convnet"], c, b.seed)

        return go

    result = compare(
        run("sequential", sequential), in_retained_heap(run("fast", sequential)), s.repeats, b.device
    )
    result["stacked"] = compare(run("sequential", sequential), run("stacked", stacked), s.repeats, b.device)
    base = outputs["sequential"]
    result["check"] = {
        "cta_sequential": base["cta"]["values"],
        "cta_stacked": outputs["stacked"]["cta"]["values"],
        "max_abs_diff": max_victim_diff(base, outputs["fast"]),
        "stacked_max_abs_diff": max_victim_diff(base, outputs["stacked"]),
        "stacked_mean_diff": outputs["stacked"]["cta"]["mean"] - base["cta"]["mean"],
    }
    result["setting"] = {"victims": 10, "epochs": s.victim_epochs, "width": s.victim_width, "ipc": 10}
    return result


def max_victim_diff(a: dict, b: dict) -> float:
    """Largest per-victim difference in CTA or ASR between two evaluations."""
    pairs = [zip(a[k]["values"], b[k]["values"], strict=True) for k in ("cta", "asr")]
    return max(abs(x - y) for pair in pairs for x, y in pair)
