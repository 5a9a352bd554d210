"""What every defense shares: its inputs, its options, and the small training helpers.

A defense is a plain function `run(model, data, options, generator) -> dict`
(JSON-able), registered with a pydantic options model. It never reads a run
directory and never modifies the model it is given (it works on a copy), so
tests call it directly on a hand-trained network and the runner calls it on
the victim it rebuilt from a run.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, ValidationError
from torch import nn
from tqdm.auto import tqdm

from ..errors import ConfigError
from ..evaluate import EvalSets, predict
from ..triggers import Trigger


class Options(BaseModel):
    """Base of every defense's options: unknown keys are errors, not silently ignored."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


@dataclass
class LabelledImages:
    """Normalised images with labels; `poison` marks the rows known to be poisoned (if known)."""

    images: torch.Tensor
    labels: torch.Tensor
    poison: torch.Tensor | None = None  # bool [N], ground truth for precision/recall only

    def __len__(self) -> int:
        return int(self.labels.shape[0])


@dataclass
class DefenseData:
    """Everything a defender holds, plus the ground truth used only for scoring.

    `clean` is the defender's small clean set (the NC/Fine-Pruning/NAD papers
    all assume one); `tests` measures CTA/ASR; `inspect` holds the data sets a
    data-level defense screens (name -> images).
    """

    clean: LabelledImages
    tests: EvalSets
    mean: tuple[float, ...]
    std: tuple[float, ...]
    num_classes: int
    trigger: Trigger | None = None
    inspect: dict[str, LabelledImages] = field(default_factory=dict)
    poison_portion: float = 0.0
    progress: bool = False

    def to_pixels(self, images: torch.Tensor) -> torch.Tensor:
        mean, std = self._stats(images)
        return images * std + mean

    def to_normalised(self, pixels: torch.Tensor) -> torch.Tensor:
        mean, std = self._stats(pixels)
        return (pixels - mean) / std

    def _stats(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(-1, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(-1, 1, 1)
        return mean, std


DefenseFn = Callable[[nn.Module, DefenseData, Any, torch.Generator], dict]


# What a defense's result must hold, by its kind; the runner checks it, and the table, report and
# sweeps read these keys. "before"/"after": {cta, asr, asr_all} of the victim before and after the
# mitigation (`evaluate.attack_metrics`); "auroc", "far", "frr": triggered vs clean test inputs;
# "sets": {set name: {flagged, size, precision, recall[, verdict]}} for each screened data set
# (`DefenseData.inspect`). Anything else a defense returns is kept in NAME.json as it is, and
# "pictures" (name -> PIL image) become NAME_<name>.png files.
RESULT_KEYS: dict[str, tuple[str, ...]] = {
    "model": ("before", "after"),
    "input": ("auroc", "far", "frr"),
    "data": ("sets",),
}


@dataclass(frozen=True)
class Defense:
    """A registry entry: the function, its options model and what kind of defense it is
    (`RESULT_KEYS` says what its result holds). A new defense is a module with its options (an
    `Options` subclass), its `run` function and one `Defense(...)`, registered under the
    entry-point group `ddbackdoor.defenses` (docs/extending.md)."""

    name: str
    kind: str  # "model" (mitigates), "input" (detects triggered inputs), "data" (screens data sets)
    options: type[Options]
    run: DefenseFn
    description: str = ""  # one line, for `ddbackdoor list`

    def __post_init__(self) -> None:
        if self.kind not in RESULT_KEYS:
            raise ConfigError(f"defense {self.name!r}: kind must be one of {', '.join(RESULT_KEYS)}")

    def check_result(self, result: object) -> dict:
        """The result, if it holds what its kind promises; else one line naming what is missing."""
        if not isinstance(result, dict):
            raise ConfigError(f"defense {self.name!r} returned {type(result).__name__}, not a dict")
        missing = [key for key in RESULT_KEYS[self.kind] if key not in result]
        if missing:
            raise ConfigError(
                f"defense {self.name!r} ({self.kind}) returned no {', '.join(missing)}; "
                f"a {self.kind} defense's result holds {', '.join(RESULT_KEYS[self.kind])}"
            )
        return result


def parse_options(owner: str, model: type[Options], values: dict[str, Any]) -> Options:
    """Validate key=value options; an unknown key or bad value is one ConfigError line."""
    try:
        return model.model_validate(values)
    except ValidationError as err:
        first = err.errors()[0]
        key = ".".join(str(p) for p in first["loc"]) or "options"
        if first["type"] == "extra_forbidden":
            accepted = ", ".join(sorted(model.model_fields))
            raise ConfigError(f"unknown option {key!r} for {owner}; accepted: {accepted}") from None
        msg = first["msg"].removeprefix("Value error, ")
        raise ConfigError(f"invalid value {first.get('input')!r} for {owner} option {key}: {msg}") from None


def working_copy(model: nn.Module) -> nn.Module:
    """Defenses never modify the caller's model."""
    return copy.deepcopy(model)


def fine_tune(
    net: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    epochs: int,
    lr: float,
    batch: int,
    generator: torch.Generator,
    extra_loss: Callable[[torch.Tensor], torch.Tensor] | None = None,
    desc: str = "fine-tune",
    progress: bool = False,
    weight_decay: float = 5e-4,
    lr_step: int = 0,
) -> nn.Module:
    """SGD with momentum 0.9 on a small set; `extra_loss(batch)` is added after the forward pass.

    `lr_step` > 0 divides the learning rate by 10 every `lr_step` epochs.
    """
    net.train()
    optimizer = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9, weight_decay=weight_decay)
    for epoch in tqdm(range(epochs), desc=desc, disable=not progress, leave=False):
        for group in optimizer.param_groups:
            group["lr"] = lr * 0.1 ** (epoch // lr_step) if lr_step else lr
        perm = torch.randperm(images.shape[0], generator=generator).to(images.device)
        for start in range(0, images.shape[0], batch):
            idx = perm[start : start + batch]
            loss = F.cross_entropy(net(images[idx]), labels[idx])
            if extra_loss is not None:
                loss = loss + extra_loss(images[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    net.eval()
    return net


def accuracy(net: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch: int = 1024) -> float:
    return float((predict(net, images, batch) == labels).float().mean())


def last_linear(net: nn.Module) -> nn.Linear:
    linears = [m for m in net.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ConfigError(f"{type(net).__name__} has no Linear layer to read penultimate features from")
    return linears[-1]


@torch.inference_mode()
def penultimate_features(net: nn.Module, images: torch.Tensor, batch: int = 512) -> torch.Tensor:
    """The input of the last Linear layer (the representation both data-level papers use)."""
    net.eval()
    store: list[torch.Tensor] = []
    handle = last_linear(net).register_forward_pre_hook(lambda _m, inputs: store.append(inputs[0].detach()))
    try:
        for start in range(0, images.shape[0], batch):
            net(images[start : start + batch])
    finally:
        handle.remove()
    return torch.cat(store).flatten(1).cpu()


def clean_subset(
    images: torch.Tensor, labels: torch.Tensor, fraction: float, generator: torch.Generator
) -> LabelledImages:
    """A uniformly drawn `fraction` of a data set: the defender's small clean set."""
    count = max(1, round(fraction * labels.shape[0]))
    index = torch.randperm(labels.shape[0], generator=generator)[:count]
    return LabelledImages(images[index], labels[index])


def precision_recall(flagged: torch.Tensor, poison: torch.Tensor | None) -> dict:
    """Of flagged rows vs the true poison rows (bool masks); None where there is no ground truth."""
    if poison is None:
        return {"precision": None, "recall": None}
    hits = int((flagged & poison).sum())
    n_flagged, n_poison = int(flagged.sum()), int(poison.sum())
    return {
        "precision": hits / n_flagged if n_flagged else None,
        "recall": hits / n_poison if n_poison else None,
        "true_positives": hits,
        "poisoned": n_poison,
    }
