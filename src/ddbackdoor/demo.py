"""The demo: clean DC, NAIVEATTACK and DOORPING side by side on the bundled data."""

from __future__ import annotations

from pathlib import Path

from .artifacts import write_json
from .config import build_config
from .experiment import run_experiment

DEMO_ATTACKS = ("none", "naive", "doorping")
SUMMARY_KEYS = {"none": "clean", "naive": "naive", "doorping": "doorping"}


def format_table(summary: dict[str, dict]) -> str:
    """A plain-text table of CTA / ASR (mean +- std over victims)."""
    lines = [f"{'attack':<10} {'CTA':>17} {'ASR':>17} {'ASR (all)':>17} {'time':>7}"]
    for name, metrics in summary.items():
        cells = [f"{metrics[k]['mean']:.3f} +- {metrics[k]['std']:.3f}" for k in ("cta", "asr", "asr_all")]
        lines.append(f"{name:<10} {cells[0]:>17} {cells[1]:>17} {cells[2]:>17} {metrics['seconds']:>6.0f}s")
    return "\n".join(lines)


def run_demo(out_dir: str | Path, overrides: list[str] | None = None, progress: bool = True) -> dict:
    """Three runs with the `quick` profile (unless overridden); writes summary.json."""
    out = Path(out_dir)
    summary: dict[str, dict] = {}
    for attack in DEMO_ATTACKS:
        config = build_config({"profile": "quick"}, [*(overrides or []), f"attack={attack}"])
        if progress:
            print(
                f"[demo] {SUMMARY_KEYS[attack]}: distilling {config.dataset} with {config.distill} ...",
                flush=True,
            )
        metrics = run_experiment(config, out / SUMMARY_KEYS[attack], progress=progress)
        summary[SUMMARY_KEYS[attack]] = {k: v for k, v in metrics.items() if k != "history"}
    write_json(out / "summary.json", summary)
    return summary
