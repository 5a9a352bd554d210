"""The neural tangent kernel of an infinitely wide fully-connected ReLU network, in closed form.

For a network with `depth` hidden ReLU layers in the NTK parameterisation (each layer
h = sigma_w / sqrt(fan_in) * W x + sigma_b * b, all weights standard normal), as width goes to
infinity the kernel of its scalar output is (Jacot et al. 2018; Arora et al. 2019):

    Sigma_1(x, y) = sigma_w^2 <x, y> / d + sigma_b^2,      Theta_1 = Sigma_1
    for l = 2 .. depth + 1, with c = Sigma_{l-1}(x, y) / sqrt(Sigma_{l-1}(x, x) Sigma_{l-1}(y, y)):
        Sigma_l(x, y) = sigma_w^2 sqrt(Sigma(x, x) Sigma(y, y)) (sqrt(1 - c^2) + (pi - acos c) c) / (2 pi)
                        + sigma_b^2
        Sigma'_l(x, y) = sigma_w^2 (pi - acos c) / (2 pi)
        Theta_l = Theta_{l-1} Sigma'_l + Sigma_l

KIP (Nguyen et al. 2021) and Chung et al. (ICLR 2024) distil with this kernel; a test compares
it with the empirical kernel of a wide finite network.
"""

from __future__ import annotations

import math

import torch


def _normalised(cross: torch.Tensor, diag1: torch.Tensor, diag2: torch.Tensor) -> tuple[torch.Tensor, ...]:
    norm = torch.sqrt(diag1[:, None] * diag2[None, :])
    c = (cross / norm).clamp(-1 + 1e-7, 1 - 1e-7)  # acos' gradient is infinite at +-1
    return c, norm


def relu_ntk(
    x1: torch.Tensor, x2: torch.Tensor, depth: int = 1, sigma_w: float = math.sqrt(2), sigma_b: float = 0.1
) -> torch.Tensor:
    """[N1, N2] NTK between the rows of x1 and x2 (any shape after the batch dimension)."""
    x1, x2 = x1.flatten(1), x2.flatten(1)
    d = x1.shape[1]
    cross = sigma_w**2 * (x1 @ x2.T) / d + sigma_b**2
    diag1 = sigma_w**2 * (x1 * x1).sum(1) / d + sigma_b**2
    diag2 = sigma_w**2 * (x2 * x2).sum(1) / d + sigma_b**2
    theta = cross
    for _ in range(depth):
        c, norm = _normalised(cross, diag1, diag2)
        angle = torch.pi - torch.acos(c)
        cross = sigma_w**2 * norm * (torch.sqrt(1 - c * c) + angle * c) / (2 * torch.pi) + sigma_b**2
        derivative = sigma_w**2 * angle / (2 * torch.pi)
        # the diagonals follow the same map at c = 1: sqrt(1 - 1) + pi * 1 = pi
        diag1 = sigma_w**2 * diag1 / 2 + sigma_b**2
        diag2 = sigma_w**2 * diag2 / 2 + sigma_b**2
        theta = theta * derivative + cross
    return theta


def kernel_ridge_predict(
    k_target_support: torch.Tensor, k_support: torch.Tensor, y_support: torch.Tensor, reg: float
) -> torch.Tensor:
    """KRR predictions K_ts (K_ss + reg * mean(diag K_ss) I)^-1 Y_s (reg relative to the kernel's
    scale, as KIP does, so one value suits any depth and input norm)."""
    n = k_support.shape[0]
    scale = torch.diagonal(k_support).mean().detach()
    system = k_support + reg * scale * torch.eye(n, dtype=k_support.dtype, device=k_support.device)
    return k_target_support @ torch.linalg.solve(system, y_support)
