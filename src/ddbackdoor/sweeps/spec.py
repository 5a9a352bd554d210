"""The sweep file: a base config, axes, explicit cases, seeds; expanded into runs with ids."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ..config import ExperimentConfig
from ..config_build import layered, read_yaml
from ..errors import ConfigError
from ..identity import config_hash
from ..mappings import leaves, with_overrides
from ..resolve import build_config

Axes = dict[str, list[Any]]


class SweepSpec(BaseModel):
    """What a sweep file holds. Every run = base <- one case <- one grid cell <- one zip row <- seed.

    `grid` may be one mapping of axes (their product) or a list of them (the union of their
    products: e.g. trigger size at one portion, then portion at one size). A run that two parts
    produce alike (same resolved config) runs once.
    """

    model_config = ConfigDict(extra="forbid")

    config: str | None = None  # a run config YAML (path relative to the sweep file)
    base: dict[str, Any] = Field(default_factory=dict)  # dotted or nested keys, over `config`
    cases: list[dict[str, Any]] = Field(default_factory=list)  # explicit override sets
    grid: Axes | list[Axes] = Field(default_factory=dict)
    zip: Axes = Field(default_factory=dict)  # lists of one length, stepped together
    seeds: list[int] = Field(default_factory=list)
    defenses: str | None = None  # `ddbackdoor defend --defense` spec run on every finished run

    @field_validator("zip")
    @classmethod
    def _zip_lengths(cls, value: Axes) -> Axes:
        lengths = {len(v) for v in value.values()}
        if len(lengths) > 1:
            raise ValueError(f"every zip list must have the same length (got lengths {sorted(lengths)})")
        return value

    def grids(self) -> list[Axes]:
        return self.grid if isinstance(self.grid, list) else [self.grid]


@dataclass(frozen=True)
class SweepRun:
    """One run of a sweep: its own overrides (the swept keys), resolved config and id."""

    id: str
    overrides: dict[str, Any]
    config: ExperimentConfig


def load_sweep(path: str | Path, overrides: list[str] | None = None) -> tuple[SweepSpec, dict[str, Any]]:
    """The parsed sweep file and its base config mapping (the `config` file under `base`, then the
    command line's `key=value` overrides, which apply to every run and may not touch a swept key)."""
    path = Path(path)
    try:
        spec = SweepSpec.model_validate(read_yaml(path))
    except ValidationError as err:
        first = err.errors()[0]
        key = ".".join(str(p) for p in first["loc"]) or "sweep"
        raise ConfigError(f"sweep file {path}: {key}: {first['msg']}") from None
    base: dict[str, Any] = {}
    if spec.config is not None:
        base = read_yaml(path.parent / spec.config)
    extra = layered({}, overrides)
    swept = swept_keys(spec)
    for key in leaves(extra):
        clash = [s for s in swept if s == key or s.startswith(f"{key}.") or key.startswith(f"{s}.")]
        if clash:
            raise ConfigError(
                f"override {key} touches {clash[0]}, which the sweep file varies (its cases, grid, zip "
                "or seeds); an override applies to every run, so edit the file for a swept key"
            )
    return spec, with_overrides(with_overrides(base, spec.base), leaves(extra))


def swept_keys(spec: SweepSpec) -> set[str]:
    """The dotted keys the file's cases, grid, zip and seeds set, run by run."""
    keys = {key for case in spec.cases for key in leaves(case)}
    keys |= {key for axes in spec.grids() for key in axes} | set(spec.zip)
    return keys | ({"seed"} if spec.seeds else set())


def _product(axes: Axes) -> list[dict[str, Any]]:
    for key, values in axes.items():
        if not isinstance(values, list) or not values:
            raise ConfigError(f"sweep axis {key!r} must be a non-empty list of values")
    keys = list(axes)
    return [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*axes.values())]


def _rows(spec: SweepSpec) -> list[dict[str, Any]]:
    cells = [cell for axes in spec.grids() for cell in _product(axes)] or [{}]
    zipped = [dict(zip(spec.zip, row, strict=True)) for row in zip(*spec.zip.values(), strict=True)] or [{}]
    seeds = [{"seed": seed} for seed in spec.seeds] or [{}]
    cases = spec.cases or [{}]
    # grid cells outermost: a sweep stopped half-way has every case (e.g. attack) at its first cells
    return [
        {**case, **cell, **row, **seed}
        for cell, case, row, seed in itertools.product(cells, cases, zipped, seeds)
    ]


def run_id(overrides: dict[str, Any], config: ExperimentConfig) -> str:
    """A readable directory name from the swept values, made unique by the config hash."""
    slug = "_".join(f"{key.rsplit('.', 1)[-1]}-{value}" for key, value in overrides.items())
    slug = "".join(c if c.isalnum() or c in "-_." else "-" for c in slug)[:80].strip("-_.")
    return f"{slug}_{config_hash(config)}" if slug else config_hash(config)


def expand(spec: SweepSpec, base: dict[str, Any]) -> list[SweepRun]:
    """Every run of the sweep in order, each resolved config once."""
    runs: list[SweepRun] = []
    seen: set[str] = set()
    for overrides in _rows(spec):
        config = build_config(with_overrides(base, overrides))
        digest = config_hash(config)
        if digest in seen:
            continue
        seen.add(digest)
        runs.append(SweepRun(run_id(overrides, config), overrides, config))
    return runs
