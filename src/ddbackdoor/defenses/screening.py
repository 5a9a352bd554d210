"""Shared frame of the data-level defenses: per data set, per class, flag rows, score vs the truth."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from .base import DefenseData, LabelledImages, penultimate_features, precision_recall

# (features of one class [n, d], seed) -> (flagged bool [n], per-class report)
ClassScreen = Callable[[np.ndarray, int], tuple[np.ndarray, dict]]


def sklearn_seed(generator: torch.Generator) -> int:
    """scikit-learn takes an int seed; draw it from the defense's generator."""
    return int(torch.randint(2**31 - 1, (1,), generator=generator))


def screen_set(
    model: nn.Module,
    images: LabelledImages,
    num_classes: int,
    screen: ClassScreen,
    generator: torch.Generator,
) -> tuple[dict, dict[int, np.ndarray]]:
    """Run `screen` on each class's penultimate features; returns the report and the features."""
    features = penultimate_features(model, images.images).numpy().astype(np.float64)
    labels = images.labels.cpu().numpy()
    flagged = np.zeros(len(labels), dtype=bool)
    per_class = []
    by_class = {}
    for c in range(num_classes):
        rows = np.flatnonzero(labels == c)
        if rows.size < 2:
            per_class.append({"class": c, "size": int(rows.size), "flagged": 0})
            continue
        flags, report = screen(features[rows], sklearn_seed(generator))
        clusters = report.pop("_clusters", None)
        if clusters is not None and images.poison is not None:  # how pure the clusters are (diagnostic)
            truth = images.poison.cpu().numpy()[rows]
            report["poison_per_cluster"] = [
                int(truth[clusters == k].sum()) for k in range(int(clusters.max()) + 1)
            ]
            report["cluster_sizes"] = [int((clusters == k).sum()) for k in range(int(clusters.max()) + 1)]
        flagged[rows[flags]] = True
        by_class[c] = features[rows]
        per_class.append({"class": c, "size": int(rows.size), "flagged": int(flags.sum()), **report})
    poison = None if images.poison is None else images.poison.cpu()
    report = {
        "size": len(labels),
        "flagged": int(flagged.sum()),
        "flagged_indices": [int(i) for i in np.flatnonzero(flagged)],
        **precision_recall(torch.from_numpy(flagged), poison),
        "per_class": per_class,
    }
    return report, by_class


def screen_all(model: nn.Module, data: DefenseData, screen: ClassScreen, generator: torch.Generator) -> dict:
    """Every data set in `data.inspect`, plus what the features come from."""
    return {
        name: screen_set(model, images, data.num_classes, screen, generator)[0]
        for name, images in data.inspect.items()
    }


def worst_case_fraction(portion: float, num_classes: int) -> float:
    """Share of the target class that is poison when `portion` of all data is relabelled to it."""
    return portion * num_classes / (1 + portion * (num_classes - 1)) if portion > 0 else 0.0
