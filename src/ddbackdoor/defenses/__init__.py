"""Defenses, by name: model-level (Neural Cleanse, Fine-Pruning, NAD), input-level (STRIP),
data-level (Spectral Signatures, Activation Clustering, FLARE), and those installed packages register
under the entry-point group `ddbackdoor.defenses` (ddbackdoor.registry).

Each entry's `run(model, data, options, generator)` returns a JSON-able dict holding what its
kind promises (`base.RESULT_KEYS`), plus PIL pictures under "pictures", saved as PNG files.
"""

from ..errors import ConfigError
from ..registry import Registry
from . import activation_clustering, fine_pruning, flare, nad, neural_cleanse, spectral_signatures, strip
from .base import RESULT_KEYS, Defense, DefenseData, LabelledImages, Options, parse_options


def _check(name: str, entry: object) -> Defense:
    if not isinstance(entry, Defense):
        raise ConfigError("the entry point must name a ddbackdoor.defenses.Defense")
    if entry.name != name:
        raise ConfigError(f"its Defense says name={entry.name!r}; set name={name!r}")
    return entry


DEFENSES: Registry[Defense] = Registry(
    "defense",
    {
        module.DEFENSE.name: module.DEFENSE
        for module in (
            neural_cleanse,
            fine_pruning,
            nad,
            strip,
            spectral_signatures,
            activation_clustering,
            flare,
        )
    },
    _check,
)

__all__ = ["DEFENSES", "RESULT_KEYS", "Defense", "DefenseData", "LabelledImages", "Options", "parse_options"]
