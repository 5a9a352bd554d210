"""Activation Clustering (Chen et al., 2018): poison forms its own cluster in a class's activations.

Per class, the penultimate-layer activations are reduced to `dims` (10)
independent components with FastICA and split by k-means into two clusters.
Which cluster is poison is decided by one of the paper's analyses:
`relative_size` flags the smaller cluster when it holds at most
`size_threshold` (35%) of the class, `silhouette` flags the smaller cluster
when the two-cluster silhouette score exceeds `silhouette_threshold` (a
class that really is two groups), `smaller` always flags the smaller cluster
(ART's default).
"""

from __future__ import annotations

import warnings
from typing import Literal

import numpy as np
import torch
from pydantic import Field
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA, FastICA
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import silhouette_score
from torch import nn

from .base import Defense, DefenseData, Options
from .plots import scatter_panels
from .screening import screen_set


class ACOptions(Options):
    dims: int = Field(10, ge=1)
    reduce: Literal["ica", "pca"] = "ica"
    analysis: Literal["silhouette", "relative_size", "smaller"] = "silhouette"
    size_threshold: float = Field(0.35, gt=0, le=1)
    silhouette_threshold: float = Field(0.15, ge=-1, le=1)


REDUCERS = {
    "ica": lambda dims, seed: FastICA(n_components=dims, max_iter=1000, tol=0.005, random_state=seed),
    "pca": lambda dims, seed: PCA(n_components=dims, random_state=seed),
}


def two_clusters(features: np.ndarray, opts: ACOptions, seed: int) -> tuple[np.ndarray, np.ndarray, float]:
    """(reduced activations, cluster id per row, silhouette score) for one class."""
    dims = min(opts.dims, features.shape[0] - 1, features.shape[1])
    with warnings.catch_warnings():  # FastICA's non-convergence warning: the clusters are what we report
        warnings.simplefilter("ignore", ConvergenceWarning)
        reduced = REDUCERS[opts.reduce](dims, seed).fit_transform(features)
    ids = KMeans(n_clusters=2, n_init=10, random_state=seed).fit_predict(reduced)
    sizes = np.bincount(ids, minlength=2)
    sil = float(silhouette_score(reduced, ids)) if sizes.min() > 0 and len(ids) > 2 else 0.0
    return reduced, ids, sil


ANALYSES = {
    "smaller": lambda share, sil, opts: True,
    "relative_size": lambda share, sil, opts: share <= opts.size_threshold,
    "silhouette": lambda share, sil, opts: sil > opts.silhouette_threshold,
}


def screen_class(features: np.ndarray, opts: ACOptions, seed: int) -> tuple[np.ndarray, dict, np.ndarray]:
    reduced, ids, sil = two_clusters(features, opts, seed)
    sizes = np.bincount(ids, minlength=2)
    small = int(np.argmin(sizes))
    share = float(sizes[small] / len(ids))
    poisonous = bool(ANALYSES[opts.analysis](share, sil, opts))
    flags = (ids == small) if poisonous else np.zeros(len(ids), dtype=bool)
    report = {"silhouette": sil, "smaller_cluster_share": share, "suspicious": poisonous, "_clusters": ids}
    return flags, report, np.column_stack([reduced[:, :2], ids])


def run(model: nn.Module, data: DefenseData, opts: ACOptions, generator: torch.Generator) -> dict:
    sets, pictures = {}, {}
    for name, images in data.inspect.items():
        layouts: dict[int, np.ndarray] = {}

        def screen(features: np.ndarray, seed: int, layouts=layouts) -> tuple[np.ndarray, dict]:
            flags, report, layout = screen_class(features, opts, seed)
            layouts[len(layouts)] = layout
            return flags, report

        report, _ = screen_set(model, images, data.num_classes, screen, generator)
        report["suspicious_classes"] = [r["class"] for r in report["per_class"] if r.get("suspicious")]
        report["verdict"] = "flagged" if report["suspicious_classes"] else "not flagged"
        sets[name] = report
        pictures[f"clusters_{name}"] = cluster_picture(images, report, layouts)
    return {"analysis": opts.analysis, "sets": sets, "pictures": pictures}


def cluster_picture(images, report: dict, layouts: dict[int, np.ndarray]):
    """One panel per class: first two reduced components, coloured by cluster, poison ringed."""
    labels = images.labels.cpu().numpy()
    poison = None if images.poison is None else images.poison.cpu().numpy()
    panels = []
    screened = [r for r in report["per_class"] if "silhouette" in r]
    for k, entry in enumerate(screened):
        layout = layouts[k]
        rows = np.flatnonzero(labels == entry["class"])
        panels.append(
            {
                "title": f"class {entry['class']} s={entry['silhouette']:.2f}",
                "points": layout[:, :2] if layout.shape[1] > 2 else np.zeros((len(rows), 2)),
                "groups": layout[:, -1].astype(int),
                "ring": None if poison is None else poison[rows],
            }
        )
    return scatter_panels(panels)


DEFENSE = Defense(
    "activation_clustering",
    "data",
    ACOptions,
    run,
    description="Activation Clustering (Chen et al. 2019): 2-means of ICA-reduced activations per class",
)
