"""scan.png: the class scores against the threshold, the suspected class's images, its reversed trigger."""

from __future__ import annotations

import torch
from PIL import Image, ImageDraw

from ..artifacts import image_grid
from .source import ScanInput

BAR_AREA = (480, 200)


def class_bars(scores: list[float], suspected: int, threshold: float | None) -> Image.Image:
    """One bar per class (the suspected one red), a line at the threshold."""
    width, height = BAR_AREA
    top, bottom, left = 20, 24, 10
    peak = max(max(scores), threshold or 0.0, 1e-9)
    picture = Image.new("RGB", BAR_AREA, "white")
    draw = ImageDraw.Draw(picture)
    step = (width - 2 * left) / len(scores)
    scale = (height - top - bottom) / peak
    for c, value in enumerate(scores):
        x0 = left + c * step + 2
        colour = (214, 39, 40) if c == suspected else (31, 119, 180)
        draw.rectangle([x0, height - bottom - value * scale, x0 + step - 4, height - bottom], fill=colour)
        draw.text((x0 + step / 2 - 3, height - bottom + 4), str(c), fill="black")
    if threshold is not None:
        y = height - bottom - threshold * scale
        draw.line([left, y, width - left, y], fill=(0, 0, 0), width=1)
        draw.text((left, max(0, y - 12)), f"threshold {threshold:.2f}", fill="black")
    draw.text((left, 2), "suspicion per class (sum over signals, against clean sets)", fill="black")
    return picture


def scan_picture(found: ScanInput, result: dict) -> Image.Image:
    """Bars on top; below, up to 10 of the suspected class's images, then its reversed mask and
    mask x pattern when the reversed-trigger signal ran."""
    suspected = result["suspected_target"]
    parts = [class_bars(result["class_scores"], suspected, result["threshold"])]
    images = found.pixels[found.labels == suspected][:10]
    reversed_ = result.get("_masks", {}).get(suspected)
    if reversed_ is not None:
        mask, pattern = reversed_["mask"].cpu(), reversed_["pattern"].cpu()
        channels = images.shape[1]
        images = torch.cat([images, mask.expand(channels, -1, -1)[None], (mask * pattern)[None]])
    parts.append(image_grid(images, rows=1, scale=3))
    width = max(p.width for p in parts)
    canvas = Image.new("RGB", (width, sum(p.height for p in parts)), "white")
    y = 0
    for part in parts:
        canvas.paste(part, (0, y))
        y += part.height
    return canvas
