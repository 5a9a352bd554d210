"""Defenses, by name: model-level (Neural Cleanse, Fine-Pruning, NAD), input-level (STRIP),
data-level (Spectral Signatures, Activation Clustering).

Each entry's `run(model, data, options, generator)` returns a JSON-able dict
(plus PIL pictures under "pictures", which the runner saves as PNG files).
"""

from . import activation_clustering, fine_pruning, nad, neural_cleanse, spectral_signatures, strip
from .base import Defense, DefenseData, LabelledImages, parse_options

DEFENSES: dict[str, Defense] = {
    module.DEFENSE.name: module.DEFENSE
    for module in (neural_cleanse, fine_pruning, nad, strip, spectral_signatures, activation_clustering)
}

__all__ = ["DEFENSES", "Defense", "DefenseData", "LabelledImages", "parse_options"]
