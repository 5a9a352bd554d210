"""Spectral Signatures (Tran et al., NeurIPS 2018): poison leaves a trace along the top singular vector.

Per class, centre the penultimate-layer features, take the top right
singular vector v, score each sample by ((r - mean) . v)^2, and remove the
1.5 * epsilon * n highest scores, epsilon being the defender's upper bound
on the poisoned fraction of a class (the paper assumes it known). Left unset,
epsilon is the worst case implied by the run's poison portion: every poisoned
image relabelled into one class.
"""

from __future__ import annotations

import numpy as np
import torch
from pydantic import Field
from torch import nn

from .base import Defense, DefenseData, Options
from .screening import screen_all, worst_case_fraction


class SpectralOptions(Options):
    epsilon: float | None = Field(None, gt=0, le=1)
    removal_factor: float = Field(1.5, gt=0)


def spectral_scores(features: np.ndarray) -> np.ndarray:
    """Squared projection of the centred features on their top right singular vector."""
    centred = features - features.mean(axis=0, keepdims=True)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    return (centred @ vt[0]) ** 2


def run(model: nn.Module, data: DefenseData, opts: SpectralOptions, generator: torch.Generator) -> dict:
    epsilon = (
        opts.epsilon
        if opts.epsilon is not None
        else worst_case_fraction(data.poison_portion, data.num_classes)
    )
    share = min(1.0, opts.removal_factor * epsilon)

    def screen(features: np.ndarray, _seed: int) -> tuple[np.ndarray, dict]:
        scores = spectral_scores(features)
        count = int(round(share * len(scores)))
        flags = np.zeros(len(scores), dtype=bool)
        flags[np.argsort(-scores, kind="stable")[:count]] = True
        top = float(np.sort(scores)[-1]) if len(scores) else 0.0
        return flags, {"max_score": top, "median_score": float(np.median(scores))}

    return {"epsilon": epsilon, "removed_share": share, "sets": screen_all(model, data, screen, generator)}


DEFENSE = Defense(
    "spectral_signatures",
    "data",
    SpectralOptions,
    run,
    description="Spectral Signatures (Tran et al. 2018): remove outliers along the top singular direction",
)
