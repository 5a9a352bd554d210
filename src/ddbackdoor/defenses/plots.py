"""Small PIL drawings (histograms, scatter panels), so defenses need no plotting library."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

COLOURS = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189), (255, 127, 14)]


def histogram(
    series: dict[str, np.ndarray],
    bins: int = 40,
    size: tuple[int, int] = (480, 300),
    marker: float | None = None,
) -> Image.Image:
    """Overlaid outline histograms of each series on shared bins; `marker` draws a vertical line."""
    values = np.concatenate([np.asarray(v, dtype=float) for v in series.values()])
    low, high = float(values.min()), float(values.max())
    if marker is not None:
        low, high = min(low, marker), max(high, marker)
    high = high if high > low else low + 1.0
    edges = np.linspace(low, high, bins + 1)
    counts = {name: np.histogram(np.asarray(v, dtype=float), edges)[0] for name, v in series.items()}
    peak = max(int(c.max()) for c in counts.values()) or 1
    width, height = size
    left, bottom, top = 10, 30, 10
    picture = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(picture)
    plot_w, plot_h = width - 2 * left, height - bottom - top
    for k, (name, count) in enumerate(counts.items()):
        colour = COLOURS[k % len(COLOURS)]
        for b, n in enumerate(count):
            x0 = left + plot_w * b / bins
            x1 = left + plot_w * (b + 1) / bins
            y = height - bottom - plot_h * n / peak
            draw.rectangle([x0 + k, y, x1 - 1, height - bottom], outline=colour)
        draw.text((left + 5, top + 12 * k), name, fill=colour)
    if marker is not None:
        x = left + plot_w * (marker - low) / (high - low)
        draw.line([x, top, x, height - bottom], fill=(0, 0, 0), width=1)
    draw.line([left, height - bottom, width - left, height - bottom], fill=(0, 0, 0))
    draw.text((left, height - bottom + 5), f"{low:.3g}", fill=(0, 0, 0))
    draw.text((width - left - 40, height - bottom + 5), f"{high:.3g}", fill=(0, 0, 0))
    return picture


def scatter_panels(panels: list[dict], columns: int = 5, cell: int = 160) -> Image.Image:
    """One square panel per entry: {"title", "points" [N, 2], "groups" [N] ints, "ring" [N] bools}.

    Points are coloured by group; ringed points (e.g. known poison) get a black outline.
    """
    rows = -(-len(panels) // columns)
    picture = Image.new("RGB", (columns * cell, rows * cell), "white")
    draw = ImageDraw.Draw(picture)
    for i, panel in enumerate(panels):
        r, c = divmod(i, columns)
        x0, y0 = c * cell, r * cell
        draw.rectangle([x0, y0, x0 + cell - 1, y0 + cell - 1], outline=(200, 200, 200))
        draw.text((x0 + 4, y0 + 2), panel["title"], fill=(0, 0, 0))
        points = np.asarray(panel["points"], dtype=float)
        if points.size == 0:
            continue
        low, high = points.min(0), points.max(0)
        span = np.where(high > low, high - low, 1.0)
        scaled = (points - low) / span * (cell - 24) + np.array([12, 18])
        ring = panel.get("ring")
        for j, (x, y) in enumerate(scaled):
            colour = COLOURS[int(panel["groups"][j]) % len(COLOURS)]
            outline = (0, 0, 0) if ring is not None and ring[j] else colour
            draw.ellipse([x0 + x - 2, y0 + y - 2, x0 + x + 2, y0 + y + 2], fill=colour, outline=outline)
    return picture
