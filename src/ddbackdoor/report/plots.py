"""Figures as PNG bytes (matplotlib, no display needed)."""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")  # before pyplot: a headless backend, whatever the user's default
import matplotlib.pyplot as plt  # noqa: E402

from .tables import Point  # noqa: E402


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def against_axis(
    axis: str,
    scores: dict[str, dict[str, list[Point]]],
    note: str,
    reference: dict[str, float] | None = None,
) -> bytes:
    """CTA and ASR (one panel each) against `axis`, one line per attack, error bars = std over
    victims; ASR points are annotated with how many victims reach 0.9; `reference` (clean runs'
    mean per score) is a dashed line."""
    fig, panels = plt.subplots(1, len(scores), figsize=(5.2 * len(scores), 3.8), squeeze=False)
    for panel, (score, lines) in zip(panels[0], scores.items(), strict=True):
        for label, points in lines.items():
            xs = [p.x for p in points]
            panel.errorbar(
                xs, [p.mean for p in points], yerr=[p.std for p in points], marker="o", capsize=3, label=label
            )
            if score == "asr":
                for p in points:
                    panel.annotate(
                        f"{p.carried}/{len(p.values)}",
                        (p.x, p.mean),
                        textcoords="offset points",
                        xytext=(4, 4),
                        fontsize=7,
                    )
        if reference and score in reference:
            panel.axhline(reference[score], color="grey", linestyle="--", linewidth=1, label="clean")
        panel.set_xlabel(axis)
        panel.set_ylabel(score.upper())
        panel.set_ylim(-0.02, 1.02)
        panel.grid(alpha=0.3)
        panel.set_title(f"{score.upper()} vs {axis}" + (f" ({note})" if note else ""), fontsize=9)
    panels[0][-1].legend(fontsize=7, loc="best")
    return _png(fig)


def history(records: list[dict]) -> bytes:
    """A run's CTA and ASR at each evaluated iteration (mean and std over victims)."""
    fig, panel = plt.subplots(figsize=(5.5, 3.5))
    xs = [r["iteration"] for r in records]
    for score in ("cta", "asr"):
        panel.errorbar(
            xs,
            [r[score]["mean"] for r in records],
            yerr=[r[score]["std"] for r in records],
            marker="o",
            capsize=3,
            label=score.upper(),
        )
    panel.set_xlabel("iteration")
    panel.set_ylim(-0.02, 1.02)
    panel.grid(alpha=0.3)
    panel.legend()
    return _png(fig)
