"""Nested mappings with dotted keys (`poison.trigger_size`): how configs, overrides, sweeps and
reports address a value, in one place."""

from __future__ import annotations

from typing import Any

from .errors import ConfigError

MISSING = object()  # what `dotted_get` returns for a key the mapping lacks


def merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """`base` with `update` merged in, section by section (neither is changed)."""
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def nested(path: list[str], value: Any) -> dict[str, Any]:
    """["a", "b"], v -> {"a": {"b": v}}."""
    out: dict[str, Any] = {path[-1]: value}
    for part in reversed(path[:-1]):
        out = {part: out}
    return out


def with_overrides(data: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
    """`data` with each `a.b: value` (dotted or nested) merged in; `data` is not changed."""
    out = dict(data)
    for key, value in values.items():
        path = key.split(".")
        if any(not part for part in path):
            raise ConfigError(f"override key {key!r} has an empty part")
        out = merge(out, nested(path, value))
    return out


def dotted_get(data: Any, key: str, default: Any = MISSING) -> Any:
    """The value at a dotted key, or `default` where the mapping has none."""
    for part in key.split("."):
        if not isinstance(data, dict) or part not in data:
            return default
        data = data[part]
    return data


def leaves(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}: every value that is not a mapping, by its dotted key."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out.update(leaves(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out
