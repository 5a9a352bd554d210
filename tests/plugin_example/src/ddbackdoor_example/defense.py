"""`--defense fine_tune`: fine-tune the victim on the defender's clean images, the baseline that
mitigation papers compare against."""

from __future__ import annotations

import torch
from pydantic import Field
from torch import nn

from ddbackdoor.defenses import Defense, DefenseData, Options
from ddbackdoor.defenses.base import fine_tune, working_copy
from ddbackdoor.evaluate import attack_metrics


class FineTuneOptions(Options):
    """`fine_tune.epochs=5 fine_tune.lr=0.01` on the command line of `ddbackdoor defend`."""

    epochs: int = Field(10, ge=1)
    lr: float = Field(0.01, gt=0)
    batch: int = Field(64, ge=1)


def run(model: nn.Module, data: DefenseData, opts: FineTuneOptions, generator: torch.Generator) -> dict:
    """A "model" defense returns the victim's CTA/ASR before and after it (RESULT_KEYS)."""
    net = working_copy(model)  # never modify the caller's model
    before = attack_metrics(net, data.tests)
    clean = data.clean
    fine_tune(net, clean.images, clean.labels, opts.epochs, opts.lr, opts.batch, generator, desc="fine-tune")
    return {"before": before, "after": attack_metrics(net, data.tests), "clean_images": len(clean)}


DEFENSE = Defense(
    "fine_tune",
    "model",
    FineTuneOptions,
    run,
    description="fine-tune the victim on clean images (example plugin)",
)
