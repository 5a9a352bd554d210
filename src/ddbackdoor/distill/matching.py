"""The gradient-matching distance of Dataset Condensation (Zhao et al., 2021)."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def row_distances(rows_syn: torch.Tensor, rows_real: torch.Tensor) -> torch.Tensor:
    """1 - cosine over the last axis, per row; the 1e-6 in the denominator is the authors'."""
    dot = (rows_real * rows_syn).sum(dim=-1)
    norms = rows_real.norm(dim=-1) * rows_syn.norm(dim=-1)
    return 1 - dot / (norms + 1e-6)


def rows_distance(rows_syn: torch.Tensor, rows_real: torch.Tensor) -> torch.Tensor:
    """Sum of `row_distances`."""
    return row_distances(rows_syn, rows_real).sum()


def layer_distance(g_syn: torch.Tensor, g_real: torch.Tensor) -> torch.Tensor:
    """Sum over output rows of 1 - cosine(g_syn, g_real); 1-D tensors contribute nothing.

    Rows are the output units: conv kernels flatten to [out, in*kh*kw].
    """
    if g_real.dim() == 1:
        return g_real.new_zeros(())
    rows_real = g_real.reshape(g_real.shape[0], -1)
    return rows_distance(g_syn.reshape(rows_real.shape), rows_real)


def match_distance(grads_syn: Sequence[torch.Tensor], grads_real: Sequence[torch.Tensor]) -> torch.Tensor:
    """The DC matching loss over all parameter tensors of a network."""
    total = grads_real[0].new_zeros(())
    for g_syn, g_real in zip(grads_syn, grads_real, strict=True):
        total = total + layer_distance(g_syn, g_real)
    return total


def batched_distance(grads_syn: dict[str, torch.Tensor], grads_real: dict[str, torch.Tensor]) -> torch.Tensor:
    """`match_distance` summed over classes, for gradients stacked along a leading class axis."""
    total = next(iter(grads_real.values())).new_zeros(())
    for name, g_real in grads_real.items():
        if g_real.dim() == 2:  # [classes, n]: a 1-D parameter per class
            continue
        rows_real = g_real.reshape(g_real.shape[0], g_real.shape[1], -1)
        total = total + rows_distance(grads_syn[name].reshape(rows_real.shape), rows_real)
    return total
