"""STRIP (Gao et al., ACSAC 2019): triggered inputs stay confident when blended with other images.

Each input is superimposed with `overlays` images drawn from the defender's
clean set and the entropy (base 2) of the model's predictions is averaged
over the blends. A trigger that dominates the prediction keeps the entropy
low. The detection threshold is the `frr` quantile (1%) of the entropies of
the defender's clean inputs; we report the FAR (triggered test inputs
passing as clean) and FRR (clean test inputs rejected) at that threshold, and
the AUROC of triggered vs clean test inputs.

Blending: `add` is the authors' cv2.addWeighted(x, 1, overlay, 1, 0) on
pixel values, saturating at white; `average` blends 0.5 / 0.5.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from pydantic import Field
from sklearn.metrics import roc_auc_score
from torch import nn
from tqdm.auto import tqdm

from .base import Defense, DefenseData, Options
from .plots import histogram


class StripOptions(Options):
    overlays: int = Field(100, ge=1)
    frr: float = Field(0.01, gt=0, lt=1)
    blend: Literal["add", "average"] = "add"
    inputs: int = Field(1000, ge=2)
    batch: int = Field(1024, ge=1)


BLENDS = {
    "add": lambda x, overlay: (x + overlay).clamp(0, 1),
    "average": lambda x, overlay: 0.5 * x + 0.5 * overlay,
}


def prediction_entropy(probs: torch.Tensor) -> torch.Tensor:
    """Shannon entropy in bits of each row of probabilities (0 log 0 = 0)."""
    return -(probs * torch.log2(probs.clamp_min(1e-12))).sum(dim=-1)


@torch.inference_mode()
def strip_entropy(
    net: nn.Module,
    inputs: torch.Tensor,
    overlay_pool: torch.Tensor,
    data: DefenseData,
    opts: StripOptions,
    generator: torch.Generator,
    desc: str = "strip",
) -> torch.Tensor:
    """Mean entropy over `overlays` blends of each (normalised) input with random clean images."""
    net.eval()
    blend = BLENDS[opts.blend]
    pixels = data.to_pixels(inputs)
    pool = data.to_pixels(overlay_pool)
    per_chunk = max(1, opts.batch // opts.overlays)
    out = []
    for start in tqdm(
        range(0, pixels.shape[0], per_chunk), desc=desc, disable=not data.progress, leave=False
    ):
        x = pixels[start : start + per_chunk]
        picks = torch.randint(pool.shape[0], (x.shape[0], opts.overlays), generator=generator).to(x.device)
        blended = blend(x.unsqueeze(1), pool[picks]).flatten(0, 1)
        probs = torch.softmax(net(data.to_normalised(blended)), dim=-1)
        out.append(prediction_entropy(probs).view(x.shape[0], opts.overlays).mean(dim=1))
    return torch.cat(out).cpu()


def run(model: nn.Module, data: DefenseData, opts: StripOptions, generator: torch.Generator) -> dict:
    tests, clean = data.tests, data.clean
    non_target = (tests.labels != tests.target).nonzero().flatten()
    pick = non_target[
        torch.randperm(non_target.numel(), generator=generator)[: opts.inputs].to(non_target.device)
    ]
    clean_pick = torch.randperm(tests.labels.numel(), generator=generator)[: opts.inputs].to(
        tests.labels.device
    )
    reference = strip_entropy(model, clean.images, clean.images, data, opts, generator, "strip reference")
    threshold = float(torch.quantile(reference, opts.frr))
    clean_h = strip_entropy(
        model, tests.clean[clean_pick], clean.images, data, opts, generator, "strip clean"
    )
    trig_h = strip_entropy(
        model, tests.triggered[pick], clean.images, data, opts, generator, "strip triggered"
    )
    scores = np.concatenate([-clean_h.numpy(), -trig_h.numpy()])
    truth = np.concatenate([np.zeros(len(clean_h)), np.ones(len(trig_h))])
    return {
        "threshold": threshold,
        "far": float((trig_h > threshold).float().mean()),
        "frr": float((clean_h <= threshold).float().mean()),
        "auroc": float(roc_auc_score(truth, scores)),
        "entropy": {
            "clean_mean": float(clean_h.mean()),
            "triggered_mean": float(trig_h.mean()),
            "reference_mean": float(reference.mean()),
        },
        "inputs": {"clean": len(clean_h), "triggered": len(trig_h), "reference": len(reference)},
        "pictures": {
            "entropy_histogram": histogram(
                {"clean test": clean_h.numpy(), "triggered test": trig_h.numpy()}, marker=threshold
            )
        },
    }


DEFENSE = Defense(
    "strip",
    "input",
    StripOptions,
    run,
    description="STRIP (Gao et al. 2019): low prediction entropy under blending flags triggered inputs",
)
