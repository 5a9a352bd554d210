"""Neural Attention Distillation (Li et al., ICLR 2021).

Teacher: the backdoored model fine-tuned on the defender's clean set.
Student: the backdoored model trained on the same clean set with
CE + sum_k beta_k * AT(student_k, teacher_k), where AT is the MSE between
L2-normalised attention maps sum_c |F_c|^p (p = 2) at several conv layers.
Their betas for three groups are 500, 1000, 1000; here the maps are read
after the activation following each of the last len(betas) conv layers.

Training follows the paper's setup: SGD lr 0.1 (momentum 0.9, weight decay
1e-4) divided by 10 every 2 epochs, 10 epochs for the teacher, 20 for the
student, on 5% of the training data (the runner's clean set).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from ..errors import ConfigError
from ..evaluate import attack_metrics
from ..triggers import ACTIVATIONS
from .base import Defense, DefenseData, Options, fine_tune, working_copy


class NADOptions(Options):
    betas: list[float] = Field(default_factory=lambda: [500.0, 1000.0, 1000.0], min_length=1)
    p: float = Field(2.0, gt=0)
    teacher_epochs: int = Field(10, ge=0)
    epochs: int = Field(20, ge=0)
    lr: float = Field(0.1, gt=0)
    lr_step: int = Field(2, ge=0)
    weight_decay: float = Field(1e-4, ge=0)
    batch: int = Field(64, ge=1)


def attention_map(features: torch.Tensor, p: float = 2.0, eps: float = 1e-6) -> torch.Tensor:
    """sum_c |F_c|^p, L2-normalised over space (their AT module)."""
    am = features.abs().pow(p).sum(dim=1, keepdim=True)
    return am / (am.norm(dim=(2, 3), keepdim=True) + eps)


def attention_loss(student: torch.Tensor, teacher: torch.Tensor, p: float = 2.0) -> torch.Tensor:
    return F.mse_loss(attention_map(student, p), attention_map(teacher, p))


def conv_outputs(net: nn.Module, count: int) -> list[nn.Module]:
    """The modules whose outputs are the activation maps of the last `count` conv layers."""
    leaves = [m for m in net.modules() if not list(m.children())]
    convs = [i for i, m in enumerate(leaves) if isinstance(m, nn.Conv2d)]
    if len(convs) < count:
        raise ConfigError(f"nad has {count} betas but the network has only {len(convs)} conv layers")
    chosen = []
    for pos, i in enumerate(convs[-count:]):
        stop = convs[len(convs) - count + pos + 1] if pos + 1 < count else len(leaves)
        acts = [m for m in leaves[i + 1 : stop] if isinstance(m, ACTIVATIONS)]
        chosen.append(acts[0] if acts else leaves[i])
    return chosen


class Recorder:
    """Forward hooks that keep the latest outputs of some modules."""

    def __init__(self, modules: list[nn.Module]):
        self.outputs: list[torch.Tensor | None] = [None] * len(modules)
        self.handles = [m.register_forward_hook(self._hook(i)) for i, m in enumerate(modules)]

    def _hook(self, i: int):
        def hook(_m: nn.Module, _inputs: object, output: torch.Tensor) -> None:
            self.outputs[i] = output

        return hook

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def run(model: nn.Module, data: DefenseData, opts: NADOptions, generator: torch.Generator) -> dict:
    clean = data.clean
    before = attack_metrics(model, data.tests)
    teacher = fine_tune(
        working_copy(model),
        clean.images,
        clean.labels,
        opts.teacher_epochs,
        opts.lr,
        opts.batch,
        generator,
        desc="nad teacher",
        progress=data.progress,
        weight_decay=opts.weight_decay,
        lr_step=opts.lr_step,
    )
    teacher_metrics = attack_metrics(teacher, data.tests)
    student = working_copy(model)
    for p in teacher.parameters():
        p.requires_grad_(False)
    teacher_rec = Recorder(conv_outputs(teacher, len(opts.betas)))
    student_rec = Recorder(conv_outputs(student, len(opts.betas)))

    def distillation(images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            teacher(images)  # student's forward already ran on the same batch
        pairs = zip(student_rec.outputs, teacher_rec.outputs, opts.betas, strict=True)
        return sum(beta * attention_loss(s, t.detach(), opts.p) for s, t, beta in pairs)

    try:
        fine_tune(
            student,
            clean.images,
            clean.labels,
            opts.epochs,
            opts.lr,
            opts.batch,
            generator,
            extra_loss=distillation,
            desc="nad student",
            progress=data.progress,
            weight_decay=opts.weight_decay,
            lr_step=opts.lr_step,
        )
    finally:
        teacher_rec.remove()
        student_rec.remove()
    return {
        "layers": len(opts.betas),
        "before": before,
        "teacher": teacher_metrics,
        "after": attack_metrics(student, data.tests),
    }


DEFENSE = Defense(
    "nad",
    "model",
    NADOptions,
    run,
    description="NAD (Li et al. 2021): attention distillation from a fine-tuned teacher",
)
