"""The newer-attacks comparison (docs/newer-attacks.md) from finished sweep directories.

    python tools/newer_attacks_table.py runs/newer-attacks runs/newer-attacks-pd \
        [--picture docs/images/newer-attacks-target.png]

One row per distiller and attack (seeds pooled, each run's victims kept): CTA and its cost (paired
with the clean run of the same distiller and seed: for Poisoned Distillation the run whose set it
received), ASR with every victim's value, victims at ASR >= 0.9, the source class's ASR, the
trigger's stealth (L-inf, SSIM and the share of stamped values outside [0, 1] on test images), and
the synthetic set's (the share of the target class's synthetic pixels outside [0, 1], and the SSIM
of its images against the paired clean run's), and seconds per run (one core; a resumed run counts
its last process). `--picture` draws the target class's synthetic
images of each attack for one seed, one row per attack, one picture per distiller.

`--keep DIR` copies what the table reads of each run (config.yaml, metrics.json, and the target
class's synthetic pixels as target.safetensors: a few tens of kB a run) to DIR/runs/ID/, so the table
and the picture can be rebuilt from DIR after the runs themselves are gone (pass DIR as a sweep).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import torch
import yaml

from ddbackdoor.artifacts import image_grid, load_tensors, save_png, save_tensors, write_text
from ddbackdoor.stealth import ssim

CARRIED = 0.9


def label(config: dict) -> str:
    """The attack as the table names it (its valid variant spelled out)."""
    attack = config["attack"]
    if attack in ("inkdrop", "sneakdoor") and config.get(attack, {}).get("clip"):
        return f"{attack} (valid pixels)"
    if attack == "poisoned_distillation":
        valid = config.get("poisoned_distillation", {}).get("trigger") == "valid"
        return "poisoned_distillation" + (" (valid pixels)" if valid else "")
    if attack in ("doorping", "invisible") and not config.get("poison", {}).get("clip", True):
        return f"{attack} (unclipped)"
    if attack == "none" and config["distill"] == "rematch":
        return "rematch alone (control)"
    poison = config.get("poison", {})
    if attack == "naive" and (poison.get("pattern"), poison.get("trigger_size"), poison.get("portion")) != (
        "white",
        2,
        0.01,
    ):  # a deliberate deviation from the authors' patch (a calibration trigger) is spelled out
        size, share = poison.get("trigger_size"), poison.get("portion")
        return f"naive ({size}x{size} {poison.get('pattern')}, {share:.0%})"
    return attack


def load(run_dir: Path) -> dict | None:
    if not (run_dir / "metrics.json").is_file():
        return None
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    received = config.get("data", {}).get("from_run")
    if (run_dir / "target.safetensors").is_file():  # kept by --keep
        tensors, meta = load_tensors(run_dir / "target.safetensors")
        pixels, distill = tensors["pixels"], meta["distill"]
    else:
        tensors, meta = load_tensors(run_dir / "synthetic.safetensors")
        mean = torch.tensor(meta["mean"]).view(1, -1, 1, 1)
        std = torch.tensor(meta["std"]).view(1, -1, 1, 1)
        pixels = (tensors["images"].float() * std + mean)[tensors["labels"] == int(meta["target"])]
        distill = config["distill"]
        if received:  # a re-optimised set belongs to the distiller that made the set it received
            distill = yaml.safe_load((Path(received) / "config.yaml").read_text())["distill"]
    return {
        "dir": run_dir,
        "distill": distill,
        "label": label(config),
        "seed": config["seed"],
        "metrics": json.loads((run_dir / "metrics.json").read_text()),
        "target_pixels": pixels,
        "received": received,
    }


def keep(runs: list[dict], out: Path) -> None:
    """What the table reads of each run, under out/runs/ID/ (the run's own directory name)."""
    for run in runs:
        dest = out / "runs" / run["dir"].name
        dest.mkdir(parents=True, exist_ok=True)
        for name in ("config.yaml", "metrics.json"):
            write_text(dest / name, (run["dir"] / name).read_text())
        pixels = {"pixels": run["target_pixels"]}
        save_tensors(dest / "target.safetensors", pixels, {"distill": run["distill"]})
    print(f"kept {len(runs)} runs under {out / 'runs'}")


def fmt(values: list[float], digits: int = 3) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} +- {statistics.stdev(values):.{digits}f}"


def by_attack(runs: list[dict]) -> list[tuple[tuple[str, str], list[dict]]]:
    """The runs grouped by (distiller, attack label), in that order, each group in seed order."""
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for run in runs:
        groups[(run["distill"], run["label"])].append(run)
    return [(key, sorted(members, key=lambda r: r["seed"])) for key, members in sorted(groups.items())]


def rows_of(runs: list[dict]) -> list[list[str]]:
    clean = {(r["distill"], r["seed"]): r for r in runs if r["label"] == "none"}
    table = []
    for (distill, name), members in by_attack(runs):
        cta = [r["metrics"]["cta"]["mean"] for r in members]
        costs, ssims, outside = [], [], []
        for r in members:
            reference = clean.get((distill, r["seed"]))
            if reference is not None and reference is not r:
                costs.append(reference["metrics"]["cta"]["mean"] - r["metrics"]["cta"]["mean"])
                ssims.append(
                    float(ssim(r["target_pixels"].clamp(0, 1), reference["target_pixels"].clamp(0, 1)).mean())
                )
            px = r["target_pixels"]
            outside.append(float(((px < 0) | (px > 1)).float().mean()))
        victims = [v for r in members for v in r["metrics"]["asr"]["values"]]
        per_seed = "; ".join(", ".join(f"{v:.2f}" for v in r["metrics"]["asr"]["values"]) for r in members)
        source = [r["metrics"]["asr_source"]["mean"] for r in members if "asr_source" in r["metrics"]]
        stealth = [r["metrics"]["stealth"] for r in members]
        table.append(
            [
                distill,
                name,
                ", ".join(str(r["seed"]) for r in members),
                fmt(cta),
                fmt(costs) if costs else "-",
                fmt([r["metrics"]["asr"]["mean"] for r in members]),
                per_seed,
                f"{sum(v >= CARRIED for v in victims)}/{len(victims)}",
                fmt(source),
                f"{statistics.mean(s['linf'] for s in stealth):.3f}",
                f"{statistics.mean(s['ssim'] for s in stealth):.3f}",
                f"{statistics.mean(s['stamped_outside_unit_share'] for s in stealth):.4f}",
                f"{statistics.mean(outside):.3f}",
                fmt(ssims) if ssims else "-",
                f"{statistics.mean(r['metrics']['seconds'] for r in members):.0f}",
            ]
        )
    return table


HEADER = [
    "distiller",
    "attack",
    "seeds",
    "CTA",
    "CTA cost",
    "ASR",
    "ASR per victim (by seed)",
    "victims >= 0.9",
    "source-class ASR",
    "trigger L-inf",
    "trigger SSIM",
    "stamped outside [0,1]",
    "target syn. outside [0,1]",
    "target syn. SSIM vs clean",
    "s/run",
]


def picture(runs: list[dict], seed: int, path: Path) -> None:
    """Per distiller: one row of target-class synthetic images per attack (seed `seed`)."""
    for distill in sorted({r["distill"] for r in runs}):
        chosen = sorted(
            (r for r in runs if r["distill"] == distill and r["seed"] == seed), key=lambda r: r["label"]
        )
        if not chosen:
            continue
        ipc = max(len(r["target_pixels"]) for r in chosen)
        rows = [
            torch.cat(
                [r["target_pixels"], torch.ones(ipc - len(r["target_pixels"]), *r["target_pixels"].shape[1:])]
            )
            for r in chosen
        ]
        out = path.with_name(f"{path.stem}-{distill}{path.suffix}")
        save_png(out, image_grid(torch.cat(rows), rows=len(chosen), scale=3))
        print(f"{out}: rows = " + ", ".join(r["label"] for r in chosen))


def finished_runs(sweeps: list[Path], load_run: Callable[[Path], dict | None]) -> list[dict]:
    """`load_run` of every run directory under the sweeps that has finished (None: not finished)."""
    return [
        r for sweep in sweeps for run_dir in sorted((sweep / "runs").glob("*")) if (r := load_run(run_dir))
    ]


def print_table(header: list[str], rows: list[list[str]]) -> None:
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(row) + " |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweeps", nargs="+", type=Path)
    parser.add_argument("--picture", type=Path, help="PNG path stem for the target-class pictures")
    parser.add_argument("--picture-seed", type=int, default=10)
    parser.add_argument("--keep", type=Path, help="copy what the table reads of each run here")
    args = parser.parse_args(argv)
    runs = finished_runs(args.sweeps, load)
    if not runs:
        print("no finished run under " + ", ".join(map(str, args.sweeps)), file=sys.stderr)
        return 2
    print_table(HEADER, rows_of(runs))
    if args.picture:
        picture(runs, args.picture_seed, args.picture)
    if args.keep:
        keep(runs, args.keep)
    return 0


if __name__ == "__main__":
    sys.exit(main())
