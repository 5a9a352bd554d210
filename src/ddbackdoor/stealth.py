"""How visible a trigger is: what stamping it does to real images.

An attack whose success rests on impossible or glaring pixels must show it
next to its ASR. Measured on the test images it is scored on, in pixel space
([0, 1]): the trigger's area, the L-inf and L2 size of the change, PSNR and
SSIM of stamped vs clean images, and the share of values that leave [0, 1]
before any clipping (the raw trigger's, and the stamped images').
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .generated_trigger import GeneratedTrigger
from .triggers import Trigger

# SSIM's usual constants for a data range of 1 (Wang et al., 2004): 11x11 Gaussian window, sigma 1.5
SSIM_WINDOW, SSIM_SIGMA, SSIM_C1, SSIM_C2 = 11, 1.5, 0.01**2, 0.03**2


def gaussian_window(channels: int, size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> torch.Tensor:
    coords = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :]).expand(channels, 1, size, size).contiguous()


def ssim(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean SSIM per image of two batches [N, C, H, W] in [0, 1] (channels averaged), in float64."""
    a, b = a.double(), b.double()
    channels = a.shape[1]
    size = min(SSIM_WINDOW, a.shape[-1], a.shape[-2])
    size -= 1 - size % 2  # odd, and no larger than the image (8x8 data)
    window = gaussian_window(channels, size).to(a.device)

    def blur(x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, window, groups=channels)

    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a**2
    var_b = blur(b * b) - mu_b**2
    cov = blur(a * b) - mu_a * mu_b
    num = (2 * mu_a * mu_b + SSIM_C1) * (2 * cov + SSIM_C2)
    den = (mu_a**2 + mu_b**2 + SSIM_C1) * (var_a + var_b + SSIM_C2)
    return (num / den).flatten(1).mean(dim=1)


def stealth_metrics(trigger: Trigger, clean: torch.Tensor) -> dict[str, float]:
    """Visibility of `trigger` on pixel-space images `clean` [N, C, H, W] (as victims see them:
    stamped, then clipped to [0, 1] when the trigger is clipped). L-inf, L2 and PSNR use the
    stamped values as they are; SSIM, which assumes the [0, 1] range, their clipped copy."""
    clean = clean.double()
    mask = trigger.mask.to(clean.device)
    raw = trigger.pattern.double().to(clean.device) * mask  # the trigger's own values, unclipped
    inside = mask.expand_as(trigger.pattern.to(clean.device)).bool()
    raw_values = raw[inside]
    if isinstance(trigger, GeneratedTrigger):  # a change of its own for each image
        raw_values = trigger.unclipped(clean).flatten()
    elif trigger.additive:  # a change, not pixel values: what x + delta would be before clipping
        raw_values = (clean + raw)[:, inside]
    stamped = trigger.to(clean.device).stamp(clean)
    change = (stamped - clean).flatten(1)
    mse = (change**2).mean(dim=1)
    psnr = torch.where(mse > 0, 10 * torch.log10(1 / mse.clamp_min(1e-30)), torch.full_like(mse, math.inf))
    outside_raw = (
        ((raw_values < 0) | (raw_values > 1)).double().mean() if raw_values.numel() else raw.new_zeros(())
    )
    outside_stamped = ((stamped < 0) | (stamped > 1)).double().mean()
    return {
        "area_pixels": int(mask.sum()),
        "area_share": float(mask.mean()),
        "linf": float(change.abs().amax(dim=1).mean()),
        "l2": float(change.norm(dim=1).mean()),
        "psnr_db": float(psnr.clamp(max=100).mean()),  # identical images count as 100 dB, not inf
        "ssim": float(ssim(stamped.clamp(0, 1), clean).mean()),
        "trigger_outside_unit_share": float(outside_raw),
        "stamped_outside_unit_share": float(outside_stamped),
        "trigger_min": float(raw_values.min()) if raw_values.numel() else 0.0,
        "trigger_max": float(raw_values.max()) if raw_values.numel() else 0.0,
    }
