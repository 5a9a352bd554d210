"""What the toolkit offers, by kind: every profile, dataset, network, distiller, attack and defense
(plugins included), each with a one-line description and its defaults. `ddbackdoor list` prints it;
`run --help` is built from it, so neither goes stale when something is added.

    from ddbackdoor.catalog import catalog
    catalog()["attacks"]["doorping"].defaults["doorping.alpha"]   # 10.0
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from .attacks import ATTACKS
from .config import ExperimentConfig
from .data import DATASETS, DEFAULT_DATASET
from .defenses import DEFENSES
from .distill import DISTILLERS
from .models import MODELS
from .profiles import PROFILE_SUMMARIES, PROFILES
from .registry import Registry, description

KINDS = ("profiles", "datasets", "networks", "distillers", "attacks", "defenses")


@dataclass(frozen=True)
class Entry:
    """One name: what it is in a line, its defaults as dotted keys, and where it comes from."""

    name: str
    summary: str
    defaults: dict[str, Any] = field(default_factory=dict)
    origin: str = "built in"


def _dotted(prefix: str, data: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out.update(_dotted(f"{prefix}{key}.", value))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _section_defaults(sections: tuple[str, ...], options: type[BaseModel] | None, name: str) -> dict:
    base = ExperimentConfig().model_dump(mode="json")
    out: dict[str, Any] = {}
    for section in sections:
        out.update(_dotted(f"{section}.", base[section]))
    if options is not None:
        out.update(_dotted(f"{name}.", options().model_dump(mode="json")))
    return out


def _network_defaults(builder: Any) -> dict[str, Any]:
    params = inspect.signature(builder).parameters.values()
    return {
        p.name: p.default
        for p in params
        if p.kind is inspect.Parameter.KEYWORD_ONLY and p.default is not inspect.Parameter.empty
    }


def _class_entries(registry: Registry) -> dict[str, Entry]:
    """Attacks or distillers: each class's line and the defaults of the sections it reads."""
    return {
        name: Entry(
            name, description(cls), _section_defaults(cls.sections, cls.options, name), registry.origin(name)
        )
        for name, cls in registry.items()
    }


def catalog() -> dict[str, dict[str, Entry]]:
    """kind -> name -> Entry, for every kind in KINDS."""
    profiles = {
        name: Entry(name, PROFILE_SUMMARIES[name], _dotted("", changes)) for name, changes in PROFILES.items()
    }
    datasets = {
        name: Entry(
            name,
            spec.description + (" [default]" if name == DEFAULT_DATASET else ""),
            {"classes": spec.num_classes, "channels": spec.channels, "native size": spec.native_size},
        )
        for name, spec in DATASETS.items()
    }
    networks = {
        name: Entry(name, description(builder), _network_defaults(builder))
        for name, builder in MODELS.items()
    }
    distillers, attacks = _class_entries(DISTILLERS), _class_entries(ATTACKS)
    defenses = {
        name: Entry(
            name,
            f"[{defense.kind}] {defense.description}",
            defense.options().model_dump(mode="json"),
            DEFENSES.origin(name),
        )
        for name, defense in DEFENSES.items()
    }
    return dict(zip(KINDS, (profiles, datasets, networks, distillers, attacks, defenses), strict=True))


def format_catalog(kinds: list[str] | None = None, width: int = 100) -> str:
    """The catalog as text: each name with its line, then its defaults (wrapped)."""
    entries = catalog()
    lines: list[str] = []
    for kind in kinds or list(KINDS):
        lines.append(f"{kind}:")
        names = entries[kind]
        pad = max(len(name) for name in names) + 2
        for name, entry in names.items():
            origin = "" if entry.origin == "built in" else f" (from {entry.origin})"
            lines.append(f"  {name:<{pad}}{entry.summary}{origin}")
            text = " ".join(f"{key}={value}" for key, value in entry.defaults.items())
            while text:
                cut = len(text) if len(text) <= width - pad - 2 else text.rfind(" ", 0, width - pad - 2)
                cut = cut if cut > 0 else len(text)
                lines.append(f"  {'':<{pad}}{text[:cut]}")
                text = text[cut:].lstrip()
        lines.append("")
    return "\n".join(lines).rstrip()


def run_help() -> str:
    """`ddbackdoor run --help`'s description: the keys, every name, and the defaults."""
    top = ExperimentConfig()
    sections = [name for name, value in top if isinstance(value, BaseModel)]
    names = {kind: ", ".join(entries) for kind, entries in catalog().items()}
    defaults = " ".join(
        f"{key}={getattr(top, key)}"
        for key in (
            "dataset",
            "network",
            "distill",
            "attack",
            "ipc",
            "seed",
            "device",
            "reproducible",
            "paired",
        )
    )
    return (
        "Key=value overrides, over a CONFIG.yaml, over the profile's defaults (profile=quick unless "
        "given). Top-level keys: profile, dataset, network, distill, attack, ipc, iterations, seed, "
        f"device, threads, reproducible, paired. Sections: {', '.join(f'{s}.*' for s in sections)} "
        f"(and a plugin's own). Defaults: profile=quick {defaults}. Profiles: {names['profiles']}. "
        f"Datasets: {names['datasets']}. Networks: {names['networks']}. "
        f"Distillers: {names['distillers']}. Attacks: {names['attacks']}. `ddbackdoor list` shows "
        "each with its description and defaults; docs/configuration.md explains every key."
    )
