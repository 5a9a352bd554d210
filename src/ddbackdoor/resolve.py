"""A run's configuration, checked against everything the package can run.

`config` is the bottom layer (schema, profiles, YAML); the registries of datasets, networks,
distillers and attacks sit above it. This module sits above both, so no algorithm module
depends on the configuration layer's callers and no import circle forms.
"""

from __future__ import annotations

from typing import Any

import torch

from .attacks import ATTACKS
from .attacks.naive import NaiveAttack
from .config import ExperimentConfig, Section
from .config_build import layered, network_options, parse_config
from .data import DATASETS
from .distill import DISTILLERS
from .distill.augment import parse_strategy
from .errors import ConfigError, unknown_name
from .models import MODELS, create_model


def build_config(
    file_data: dict[str, Any] | None = None, overrides: list[str] | None = None
) -> ExperimentConfig:
    """Profile defaults <- YAML mapping <- dotted overrides, validated, names checked."""
    data = layered(file_data, overrides)
    config = parse_config(data, [], plugin_sections(data))
    check_names(config)
    return config


def plugin_sections(data: dict[str, Any]) -> dict[str, type[Section]]:
    """The config sections that the run's attack and distiller declare of their own (`options`:
    a plugin's settings, `<name>.*`), so the schema validates and records them."""
    sections: dict[str, type[Section]] = {}
    for registry, key, default in ((ATTACKS, "attack", "doorping"), (DISTILLERS, "distill", "dc")):
        name = data.get(key, default)
        if isinstance(name, str) and name in registry and registry[name].options is not None:
            sections[name] = registry[name].options
    return sections


def check_names(config: ExperimentConfig) -> None:
    """Registry names and cross-field limits that pydantic alone cannot see."""
    if config.dataset not in DATASETS:
        raise unknown_name("dataset", config.dataset, list(DATASETS))
    for name in [config.network, *config.eval.victims]:
        if name not in MODELS:
            raise unknown_name("network", name, list(MODELS))
    DISTILLERS.get_or_fail(config.distill)
    ATTACKS.get_or_fail(config.attack)
    parse_strategy(config.dsa.strategy)
    spec = DATASETS[config.dataset]
    size = config.data.image_size
    if config.poison.trigger_size > size - 1:
        raise ConfigError(
            f"invalid value {config.poison.trigger_size} for poison.trigger_size: "
            f"the trigger must fit inside the {size}x{size} image (at most {size - 1})"
        )
    for name in {config.network, *config.eval.victims}:  # bad network options fail before any work
        with torch.device("meta"):  # shapes only: a huge width must not allocate memory here
            create_model(name, spec.channels, spec.num_classes, size, **network_options(config, name))
    if config.reproducible and config.dc.compile is True:
        raise ConfigError(
            "dc.compile=true cannot be reproducible (inductor compiles for the host's vector ISA); "
            "pass dc.compile=auto or false, or reproducible=false"
        )
    source = config.eval.source_class
    if source is not None and (source >= spec.num_classes or source == config.poison.target):
        raise ConfigError(
            f"invalid value {source} for eval.source_class: it must be a class of {config.dataset} "
            f"(0..{spec.num_classes - 1}) other than the target {config.poison.target}"
        )
    if config.poison.pattern != "white" and not issubclass(ATTACKS[config.attack], NaiveAttack):
        raise ConfigError(
            f"poison.pattern={config.poison.pattern} has no effect with attack={config.attack} "
            "(it draws or optimises its own trigger); use it with attack=naive or attack=none"
        )
    if config.attack == "seeded" and config.seeded.images > config.ipc:
        raise ConfigError(
            f"invalid value {config.seeded.images} for seeded.images: the target class has "
            f"ipc={config.ipc} synthetic images, so at most {config.ipc} can start from poison"
        )
    if config.poison.target >= spec.num_classes:
        raise ConfigError(
            f"invalid value {config.poison.target} for poison.target: "
            f"{config.dataset} has classes 0..{spec.num_classes - 1}"
        )
