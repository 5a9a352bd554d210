"""What makes two configs the same run, across versions: the spec's keys only (a key declared
runtime never counts), and a config.yaml written by an earlier version read as what it ran.

Config versioning is one table, `CHANGES`, of three kinds of change:

* `Added`: a key added with a default that changes what some runs do. Run ids count only values
  that differ from the defaults, and an old config.yaml is read with today's defaults, so such a
  key would make an old run pass for a new one; recording what its absence meant, and where it
  matters, keeps old runs apart from new ones.
* `Flipped`: a key whose default changed; run ids compare it with the old default, so the runs
  of an older sweep keep their ids.
* `Removed`: an option taken out of the schema (tried and not chosen; its record stays in
  docs/decisions.md). An old run that left it at its default reads as before; one that used it
  cannot be resumed or defended by this version, and says so in one line.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError

from .config import ExperimentConfig
from .errors import ConfigError
from .mappings import MISSING, dotted_get, leaves, with_overrides

Conditions = tuple[tuple[str, Any], ...]  # (dotted key, value) pairs


def _holds(data: dict[str, Any], conditions: Conditions) -> bool:
    return all(dotted_get(data, key) == value for key, value in conditions)


@dataclass(frozen=True)
class Added:
    """`key` appeared with a default that changes behaviour; a config without it meant `before`
    wherever `where` holds, and the key does nothing (either value) wherever `unless` does."""

    key: str
    before: Any
    where: Conditions = ()
    unless: Conditions = ()

    def idle(self, data: dict[str, Any]) -> bool:
        return any(dotted_get(data, key) == value for key, value in self.unless)

    def matters(self, data: dict[str, Any]) -> bool:
        return _holds(data, self.where) and not self.idle(data)


@dataclass(frozen=True)
class Flipped:
    """`key`'s default changed from `before`; run ids keep comparing it with `before`, so a run made
    under the old default keeps its id and one under the new default gets another."""

    key: str
    before: Any


@dataclass(frozen=True)
class Removed:
    """`key` left the schema; runs that kept it at `default` are the runs of today's schema."""

    key: str
    default: Any
    why: str  # where its record is

    def drop(self, data: dict[str, Any]) -> dict[str, Any]:
        value = dotted_get(data, self.key)
        if value is MISSING:
            return data
        if value != self.default:
            raise ConfigError(
                f"this run was made with {self.key}={value!r}, an option this version no longer has "
                f"({self.why}); read it with ddbackdoor 0.1.0, or start it again without the option"
            )
        section, _, name = self.key.rpartition(".")
        out = json.loads(json.dumps(data))  # a deep copy of plain YAML data
        owner = dotted_get(out, section) if section else out
        owner.pop(name)
        return out


_SEEDED = "tried on held-out seeds and not chosen: docs/decisions.md"

CHANGES: tuple[Added | Flipped | Removed, ...] = (
    Added("seeded.typical", False, where=(("attack", "seeded"),)),
    # fast by default since 2026-12-06; a config older than the key ran on the host's kernels, as
    # the new default reads it
    Flipped("reproducible", True),
    # a clean run draws the same with either value, so its id and resume do not change
    Added("paired", False, unless=(("attack", "none"),)),
    Removed("seeded.blend", 1.0, _SEEDED),
    Removed("seeded.composite", 1, _SEEDED),
    Removed("seeded.order", "random", _SEEDED),
    Removed("seeded.prototype", "medoid", _SEEDED),
    Removed("seeded.split", False, _SEEDED),
    Removed("seeded.contrast", 1.0, _SEEDED),
    Removed("seeded.pick", "random", _SEEDED),
)
ADDED = tuple(change for change in CHANGES if isinstance(change, Added))
FLIPPED = {change.key: change.before for change in CHANGES if isinstance(change, Flipped)}


def runtime_keys(schema: type[BaseModel], prefix: str = "") -> frozenset[str]:
    """The dotted keys the schema declares runtime (`config.RUNTIME`): how a run executes, never
    what it computes."""
    keys: set[str] = set()
    for name, field in schema.model_fields.items():
        extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
        annotation = field.annotation
        if extra.get("runtime"):
            keys.add(f"{prefix}{name}")
        elif isinstance(annotation, type) and issubclass(annotation, BaseModel):
            keys |= runtime_keys(annotation, f"{prefix}{name}.")
    return frozenset(keys)


def earlier_defaults(data: dict[str, Any]) -> dict[str, Any]:
    """The added keys that matter for this (dumped) config, with what a config written before
    each existed meant."""
    return {change.key: change.before for change in ADDED if change.matters(data)}


def idle_keys(data: dict[str, Any], schema: type[BaseModel] = ExperimentConfig) -> frozenset[str]:
    """The dotted keys that tell no two runs apart (run ids, resume) for this (dumped) config: the
    runtime keys, and the added keys this config makes idle."""
    return runtime_keys(schema) | frozenset(change.key for change in ADDED if change.idle(data))


def _counts(key: str, idle: frozenset[str]) -> bool:
    return not any(key == name or key.startswith(f"{name}.") for name in idle)


def upgrade(old: dict[str, Any]) -> dict[str, Any]:
    """A config dict written by an earlier version, as today's schema reads it: removed options
    dropped (or refused, where the run used them), added keys it lacks set to what they meant."""
    for change in CHANGES:
        if isinstance(change, Removed):
            old = change.drop(old)
    missing = {k: v for k, v in earlier_defaults(old).items() if dotted_get(old, k) is MISSING}
    return with_overrides(old, missing)


def config_hash(config: ExperimentConfig) -> str:
    """Same spec, same hash, on every machine and Python version. Only the spec's values that
    differ from the schema's defaults count, so a later version that adds a key (with a default
    that keeps old behaviour) finds the runs of an older sweep under the same ids; an added key
    whose default changed behaviour is compared, where it matters, with what its absence meant."""
    data = config.model_dump(mode="json")
    defaults = {**leaves(type(config)().model_dump(mode="json")), **FLIPPED, **earlier_defaults(data)}
    idle = idle_keys(data, type(config))
    changed = {k: v for k, v in leaves(data).items() if defaults.get(k, k) != v and _counts(k, idle)}
    text = json.dumps(changed, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:10]


def config_differences(
    old: dict, new: dict, prefix: str = "", ignore: frozenset[str] = frozenset()
) -> list[str]:
    """Dotted keys whose values differ between two resolved configs, but for those in `ignore`
    (and below them)."""
    out: list[str] = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += config_differences(a, b, f"{prefix}{key}.", ignore)
        elif a != b and _counts(f"{prefix}{key}", ignore):
            out.append(f"{prefix}{key} ({a!r} there, {b!r} now)")
    return out


def with_new_defaults(old: dict, schema: type[ExperimentConfig] = ExperimentConfig) -> dict:
    """A config.yaml written by an earlier version, upgraded and validated by today's schema (with
    the run's plugin sections), so a run resumes across versions; a file the schema rejects is
    compared as it is, and the difference is reported."""
    upgraded = upgrade(old)
    try:
        return schema.model_validate(upgraded).model_dump(mode="json")
    except ValidationError:
        return upgraded


def resume_differences(old: dict, config: ExperimentConfig) -> list[str]:
    """What keeps a run directory's config from being this run: differences in the spec only."""
    new = config.model_dump(mode="json")
    return config_differences(with_new_defaults(old, type(config)), new, ignore=idle_keys(new, type(config)))
