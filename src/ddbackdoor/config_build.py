"""Building one run's config from its layers, and YAML in and out: profile defaults
(ddbackdoor.profiles) <- a YAML mapping <- dotted `key=value` overrides, validated by the schema
(ddbackdoor.config) with the sections of the plugins the run uses. Registry names are checked one
layer up, in `ddbackdoor.resolve.build_config`, which every caller goes through."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, Field, ValidationError, create_model

from .config import ExperimentConfig
from .errors import ConfigError
from .mappings import merge, nested
from .profiles import PROFILES, profile_defaults


def parse_override(item: str) -> tuple[list[str], Any]:
    """`a.b=value` -> (["a", "b"], parsed value); values are parsed as YAML scalars."""
    if "=" not in item:
        raise ConfigError(f"override {item!r} is not key=value (e.g. ipc=10, poison.portion=0.01)")
    key, raw = item.split("=", 1)
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {item!r} has an empty key")
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        text = path.read_text()
    except (OSError, ValueError) as err:  # ValueError: a NUL byte in the path, or not UTF-8 text
        reason = (
            err.strerror
            if isinstance(err, OSError)
            else "not UTF-8 text"
            if isinstance(err, UnicodeDecodeError)
            else "the path holds a NUL byte"
        )
        raise ConfigError(f"cannot read config file {str(path)!r}: {reason}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"config file {path} is not valid YAML{where}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of keys, not {type(data).__name__}")
    return data


def _format_error(err: ValidationError) -> str:
    first = err.errors()[0]
    key = ".".join(str(p) for p in first["loc"]) or "config"
    if first["type"] == "extra_forbidden":
        return f"unknown config key {key!r}; see `ddbackdoor run --help` for the accepted keys"
    value = first.get("input")
    shown = "" if isinstance(value, dict) else f" {value!r}"
    msg = first["msg"].removeprefix("Value error, ")
    return f"invalid value{shown} for {key}: {msg}"


@functools.cache
def _schema(sections: tuple[tuple[str, type[BaseModel]], ...]) -> type[ExperimentConfig]:
    if not sections:
        return ExperimentConfig
    for name, _ in sections:
        if name in ExperimentConfig.model_fields:
            raise ConfigError(f"a plugin's config section {name!r} clashes with the built-in key {name!r}")
    fields: dict[str, Any] = {name: (model, Field(default_factory=model)) for name, model in sections}
    return create_model("ExperimentConfig", __base__=ExperimentConfig, **fields)


def schema(sections: Mapping[str, type[BaseModel]] | None = None) -> type[ExperimentConfig]:
    """ExperimentConfig with the config sections of the plugins a run uses (name -> model), so a
    plugin's keys are validated, defaulted and written to config.yaml like the built-in ones."""
    return _schema(tuple(sorted((sections or {}).items())))


def layered(file_data: dict[str, Any] | None = None, overrides: list[str] | None = None) -> dict[str, Any]:
    """The YAML mapping with dotted `key=value` overrides merged over it (not yet validated)."""
    out: dict[str, Any] = dict(file_data or {})
    for item in overrides or []:
        path, value = parse_override(item)
        if path == ["victims"]:  # shorthand for eval.victims
            path = ["eval", "victims"]
        out = merge(out, nested(path, value))
    return out


def parse_config(
    file_data: dict[str, Any] | None = None,
    overrides: list[str] | None = None,
    sections: Mapping[str, type[BaseModel]] | None = None,
) -> ExperimentConfig:
    """Profile defaults <- YAML mapping <- dotted overrides, validated by the schema alone (registry
    names are checked one layer up, in `ddbackdoor.resolve.build_config`, which also names the
    plugin `sections` this run has)."""
    layered_data = layered(file_data, overrides)
    profile = layered_data.get("profile", "quick")
    if not isinstance(profile, str) or profile not in PROFILES:
        raise ConfigError(f"invalid value {profile!r} for profile; accepted: {', '.join(PROFILES)}")
    merged = merge(profile_defaults(profile, layered_data.get("distill", "dc")), layered_data)
    try:
        config = schema(sections).model_validate(merged)
    except ValidationError as err:
        raise ConfigError(_format_error(err)) from None
    return config


def network_options(config: ExperimentConfig, name: str) -> dict[str, Any]:
    """The `net` section configures the ConvNet family; other networks use their defaults."""
    return config.net.model_dump() if name == "convnet" else {}


def to_yaml(config: ExperimentConfig, extra: dict[str, Any] | None = None) -> str:
    data = config.model_dump(mode="json")
    if extra:
        data = {**data, **extra}
    return yaml.safe_dump(data, sort_keys=False)
