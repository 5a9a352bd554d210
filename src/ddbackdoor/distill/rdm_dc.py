"""RDM-DC: poisoning-resilient distribution matching (Zheng & Li, UAI 2023, PMLR 216: 2541-2550).

DM (distill/dm.py) pulls each class's synthetic mean embedding towards the mean embedding of a real
batch of that class, so whatever poisoned real images the batch holds move the target point; the
paper calls that shift the poisoned deviation. RDM-DC replaces the real mean by a calibrated mean,
a spectral filter from robust mean estimation: centre the class's real embeddings, find the top
eigenvector of their covariance by power iteration, drop the floor(3 epsilon B) embeddings whose
projection on it is largest in magnitude, and average the rest. Poisoned images that share a
feature (a trigger) pull the covariance's top direction towards themselves and are the first to go;
a clean batch loses its most atypical images and its mean barely moves.

Everything else is DM's: the same random networks, augmentation, optimiser and victims
(`dm.*` settings apply), and the synthetic side keeps the plain mean.

What the paper does not fix, we chose and name: `epsilon`, the assumed poisoned share of one
class's batch, is 0.1 by default (the InkDrop release's setting for its RDM-DC baseline: 1% of all
data relabelled to the target is about 10% of that class); the power iteration starts from the
centred embedding of largest norm (no random draw, so an RDM-DC run draws what a DM run draws) and
runs `power_iterations` (10) steps.
"""

from __future__ import annotations

import math

import torch
from pydantic import Field

from ..config import Section
from .dm import DMDistiller


class RDMDCOptions(Section):
    """RDM-DC's own settings (`rdm_dc.*`); the rest is DM's (`dm.*`)."""

    epsilon: float = Field(0.1, ge=0, lt=1 / 3)  # assumed poisoned share of a class's real batch
    power_iterations: int = Field(10, ge=1)


def top_direction(centred: torch.Tensor, iterations: int) -> torch.Tensor:
    """Unit top eigenvector of the rows' covariance by power iteration, without forming the D x D
    matrix; starts from the row of largest norm (deterministic, and never orthogonal to the data)."""
    vector = centred[centred.norm(dim=1).argmax()]
    vector = vector / vector.norm().clamp_min(1e-12)
    for _ in range(iterations):
        vector = centred.T @ (centred @ vector)
        vector = vector / vector.norm().clamp_min(1e-12)
    return vector


def kept_rows(embeddings: torch.Tensor, epsilon: float, iterations: int) -> torch.Tensor:
    """Indices of the rows the filter keeps: all but the floor(3 epsilon B) with the largest
    |projection| on the top principal direction (all rows when that drops none, or all)."""
    count = embeddings.shape[0]
    drop = math.floor(3 * epsilon * count)
    if drop <= 0 or drop >= count:
        return torch.arange(count, device=embeddings.device)
    centred = embeddings - embeddings.mean(0)
    scores = (centred @ top_direction(centred, iterations)).abs()
    return torch.argsort(scores, stable=True)[: count - drop]


def calibrated_mean(embeddings: torch.Tensor, epsilon: float, iterations: int) -> torch.Tensor:
    """The mean of the rows `kept_rows` keeps (the plain mean, to the bit, when it keeps all)."""
    keep = kept_rows(embeddings, epsilon, iterations)
    return embeddings.mean(0) if keep.shape[0] == embeddings.shape[0] else embeddings[keep].mean(0)


class RDMDCDistiller(DMDistiller):
    """DM whose real class means are calibrated means; see the module docstring."""

    name = "rdm_dc"
    description = "RDM-DC (Zheng & Li 2023): DM with a poisoning-resilient (calibrated) real mean"
    options = RDMDCOptions

    def real_mean(self, embeddings: torch.Tensor) -> torch.Tensor:
        return calibrated_mean(embeddings, self.settings.epsilon, self.settings.power_iterations)
