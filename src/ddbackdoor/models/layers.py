"""Layers shared by every model."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Linear(nn.Linear):
    """`nn.Linear` that never hands BLAS a product with a single row.

    Why: MKL computes a one-row product on a matrix-vector branch that rounds differently from
    its GEMM branch, and reproducible mode's pins (``MKL_CBWR``) are documented to hold for GEMM.
    DOORPING's trigger update runs the network on one image, and those one-row products were the
    only MKL calls its runs made that clean and NAIVEATTACK runs did not (``MKL_VERBOSE``); its
    pinned fingerprints differed between an Intel Sapphire Rapids host and AMD EPYC while theirs
    agreed. A one-image batch is therefore computed as a two-row batch (the image and a detached
    copy) and row 0 returned: the same values, on the branch the pins hold for.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2 and x.shape[0] == 1:
            return F.linear(torch.cat([x, x.detach()]), self.weight, self.bias)[:1]
        return super().forward(x)
