"""The model registry and the option checks every architecture shares.

It sits below the architecture modules, which import `register` from here and add themselves
when `ddbackdoor.models` imports them.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import torch
from torch import nn

from ddbackdoor.errors import ConfigError, unknown_name

MIN_IMAGE_SIZE = 16
"""Smallest image side every registered model is guaranteed to accept."""

MODELS: dict[str, Callable[..., nn.Module]] = {}
"""Model name -> builder ``(channels, num_classes, image_size, **options)``."""

BuilderT = TypeVar("BuilderT", bound=Callable[..., nn.Module])


def register(name: str) -> Callable[[BuilderT], BuilderT]:
    """Add a builder to `MODELS` under `name`.

    A decorator keeps each architecture's name next to its definition, so
    adding a model never means editing a dispatch chain. The builder's
    keyword-only parameters are its options (see `model_options`).
    """

    def decorate(builder: BuilderT) -> BuilderT:
        if name in MODELS:
            raise ValueError(f"model {name!r} is registered twice")
        MODELS[name] = builder
        return builder

    return decorate


def model_names() -> list[str]:
    """The registered model names, sorted, for help texts and error messages."""
    return sorted(MODELS)


def model_options(name: str) -> list[str]:
    """The option names model `name` accepts (its keyword-only parameters)."""
    builder = _builder(name)
    params = inspect.signature(builder).parameters.values()
    return sorted(p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY)


def create_model(
    name: str, channels: int, num_classes: int, image_size: int = 32, **options: Any
) -> nn.Module:
    """Build model `name` for images ``[B, channels, image_size, image_size]``.

    Options are checked here, against the builder's signature, so that a typo
    in a config becomes a one-line `ConfigError` naming the accepted options.
    Parameters are drawn from torch's global RNG only, so ``torch.manual_seed``
    makes the result reproducible.
    """
    builder = _builder(name)
    check_int(name, "channels", channels, 1)
    check_int(name, "num_classes", num_classes, 1)
    check_int(name, "image_size", image_size, MIN_IMAGE_SIZE)
    accepted = model_options(name)
    for key in options:
        if key not in accepted:
            if not accepted:
                raise ConfigError(f"model {name!r} takes no options, got {key!r}; accepted: none")
            raise unknown_name(f"{name} option", key, accepted)
    return builder(channels, num_classes, image_size, **options)


def check_choice(model: str, option: str, value: object, accepted: Sequence[str]) -> None:
    """Reject an option value outside `accepted` with a one-line `ConfigError`."""
    if not isinstance(value, str) or value not in accepted:
        raise unknown_name(f"{model} {option}", str(value), accepted)


def check_int(model: str, option: str, value: object, minimum: int) -> None:
    """Reject anything but an int >= `minimum` (bools too: ``True`` is not a width)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{model} {option} must be an int >= {minimum}, got {value!r}")


def flat_features(model: str, features: nn.Module, channels: int, image_size: int) -> int:
    """Size of `features`' output for one image, found by a dummy forward.

    Deriving it from a forward pass (instead of arithmetic per architecture)
    keeps padding and pooling quirks in one place: the layers themselves. The
    pass runs in eval mode under no_grad so that BatchNorm running statistics
    are left untouched, and it uses zeros, so it draws nothing from the RNG.
    """
    was_training = features.training
    features.eval()
    try:
        with torch.no_grad():
            out = features(torch.zeros(1, channels, image_size, image_size))
    except (RuntimeError, ValueError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(
            f"{model}: image_size {image_size} is too small for this configuration ({reason})"
        ) from exc
    finally:
        features.train(was_training)
    if out.numel() == 0:
        raise ConfigError(f"{model}: image_size {image_size} is too small for this configuration")
    return out[0].numel()


def _builder(name: str) -> Callable[..., nn.Module]:
    try:
        return MODELS[name]
    except (KeyError, TypeError):
        raise unknown_name("model", str(name), model_names()) from None
