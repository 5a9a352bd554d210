"""An input-specific trigger: a small network that writes a bounded perturbation for each image.

InkDrop and SNEAKDOOR (attacks/boundary.py) do not stamp one pattern on every image: a generator
G maps each (normalised) image x_n to its own change, x_n' = x_n + clamp(G(x_n), -eps, eps), as in
their release, where eps is in normalised units (per channel, eps * std in pixels). Evaluation,
the defenses and `defend` only call `stamp`, so the trigger travels with its run like any other:
the generator's weights are saved next to the synthetic set as `trigger_generator.*` safetensors
(never pickled) and rebuilt by `from_saved`.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
from torch import nn

from .errors import ArtifactError
from .triggers import Trigger

STAMP_BATCH = 1024  # images per generator forward when stamping a whole test set
GENERATOR_PREFIX = "trigger_generator."


class PerturbationNet(nn.Module):
    """A small encoder-decoder with a tanh output (values in (-1, 1)), of our own design: the
    releases use IBA's U-Net for colour images and an autoencoder for MNIST-like ones. Two
    stride-2 downsamplings and two upsamplings, so any size divisible by 4 works (28, 32, 64)."""

    def __init__(self, channels: int, width: int = 16):
        super().__init__()
        self.channels, self.width = channels, width
        self.encode = nn.Sequential(
            nn.Conv2d(channels, width, 3, padding=1),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.Conv2d(width, 2 * width, 4, stride=2, padding=1),
            nn.BatchNorm2d(2 * width),
            nn.ReLU(),
            nn.Conv2d(2 * width, 4 * width, 4, stride=2, padding=1),
            nn.BatchNorm2d(4 * width),
            nn.ReLU(),
        )
        self.decode = nn.Sequential(
            nn.ConvTranspose2d(4 * width, 2 * width, 4, stride=2, padding=1),
            nn.BatchNorm2d(2 * width),
            nn.ReLU(),
            nn.ConvTranspose2d(2 * width, width, 4, stride=2, padding=1),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.Conv2d(width, channels, 3, padding=1),
            nn.BatchNorm2d(channels),
            nn.Tanh(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))


@dataclass
class GeneratedTrigger(Trigger):
    """x' = x + std * clamp(G((x - mean) / std), -eps, eps) in pixel space, clipped to [0, 1] when
    `clip` (the valid variant); the releases do not clip. `pattern` holds one example change (the
    picture in trigger.png), `mask` is the full frame."""

    generator: nn.Module | None = None
    epsilon: float = 0.5  # normalised units, per channel
    mean: tuple[float, ...] = field(default_factory=tuple)
    std: tuple[float, ...] = field(default_factory=tuple)

    def stats(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean = torch.tensor(self.mean, dtype=like.dtype, device=like.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, dtype=like.dtype, device=like.device).view(1, -1, 1, 1)
        return mean, std

    def change(self, images: torch.Tensor) -> torch.Tensor:
        """The pixel-space change for each image [N, C, H, W] (differentiable in the generator)."""
        if self.generator is None:
            raise ArtifactError("a generated trigger has no generator; it was not trained or loaded")
        mean, std = self.stats(images)
        out = self.generator(((images - mean) / std).float()).to(images.dtype)
        return std * out.clamp(-self.epsilon, self.epsilon)

    def changes(self, images: torch.Tensor) -> torch.Tensor:
        """`change` for a whole set, in batches, with the generator in eval mode and no autograd."""
        assert self.generator is not None
        was_training = self.generator.training
        self.generator.eval()
        try:
            with torch.no_grad():
                parts = [self.change(chunk) for chunk in images.split(STAMP_BATCH)]
        finally:
            self.generator.train(was_training)
        return torch.cat(parts) if parts else torch.zeros_like(images)

    def stamp(self, images: torch.Tensor) -> torch.Tensor:
        out = images + self.changes(images)
        return out.clamp(0, 1) if self.clip else out

    def unclipped(self, images: torch.Tensor) -> torch.Tensor:
        """Each image's values before any clipping (what stealth's out-of-range share counts)."""
        return images + self.changes(images)

    def with_pattern(self, pattern: torch.Tensor, mask: torch.Tensor | None = None) -> GeneratedTrigger:
        mask = self.mask if mask is None else mask
        return GeneratedTrigger(
            pattern,
            mask,
            self.target,
            self.clip,
            True,
            1.0,
            self.generator,
            self.epsilon,
            self.mean,
            self.std,
        )

    def to(self, device: torch.device | str) -> GeneratedTrigger:
        moved = self.with_pattern(self.pattern.to(device), self.mask.to(device))
        if self.generator is not None and next(self.generator.parameters()).device != torch.device(device):
            moved.generator = copy.deepcopy(self.generator).to(device)
        return moved

    # -- saving and loading (safetensors only) --------------------------------------------------
    def saved_tensors(self) -> dict[str, torch.Tensor]:
        assert self.generator is not None
        return {GENERATOR_PREFIX + k: v.detach().cpu() for k, v in self.generator.state_dict().items()}

    def saved_meta(self) -> dict:
        assert isinstance(self.generator, PerturbationNet)
        return {
            "trigger_kind": "generated",
            "trigger_epsilon": self.epsilon,
            "trigger_generator_width": self.generator.width,
        }


def generated_from_saved(
    tensors: dict[str, torch.Tensor], meta: dict, base: Trigger, mean: list, std: list
) -> GeneratedTrigger:
    """Rebuild a saved generated trigger; a damaged or foreign file is one ArtifactError line."""
    state = {
        k.removeprefix(GENERATOR_PREFIX): v for k, v in tensors.items() if k.startswith(GENERATOR_PREFIX)
    }
    channels = base.pattern.shape[0]
    try:
        net = PerturbationNet(channels, int(meta["trigger_generator_width"]))
        net.load_state_dict(state)
    except (KeyError, RuntimeError, ValueError) as err:
        raise ArtifactError(f"the saved trigger generator does not load ({type(err).__name__})") from None
    net.eval()
    return GeneratedTrigger(
        base.pattern,
        base.mask,
        base.target,
        base.clip,
        True,
        1.0,
        net,
        float(meta["trigger_epsilon"]),
        tuple(float(m) for m in mean),
        tuple(float(s) for s in std),
    )
