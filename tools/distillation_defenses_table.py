"""The receiver's defenses against the attacks (docs/distillation-defenses.md), from finished sweeps.

    python tools/distillation_defenses_table.py runs/rdm-dc [--calibration FILE]

Three tables. One row per distiller and attack, every defense side by side: the victims' ASR
(victims at 0.9), what `ddbackdoor scan` says of the set (RUN/scan/scan.json judged against the
calibration, default the shipped one: flagged, target named), FLARE's DER on the synthetic set, and
RDM-DC's DER against DM's run of the same seed (RDM-DC rows). Then the details. RDM-DC: per
attack, DM's and RDM-DC's runs of the same seeds side by side (CTA and ASR with every victim's
value) and BackdoorBench's defense effectiveness rating per seed,
DER = (max(0, ASR_dm - ASR_rdm) - max(0, CTA_dm - CTA_rdm) + 1) / 2 on the victims' means (1: the
backdoor gone at no CTA cost; 0.5: nothing changed). FLARE (RUN/defenses/flare.json, from
`ddbackdoor defend RUN --defense flare`): per distiller and attack, what it flags in the poisoned
real data (recall, precision) and in the synthetic set, and the run's first victim before and after
the flagged synthetic images are removed (CTA, ASR, DER).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import yaml

from ddbackdoor.scan import judge, load_calibration

sys.path.insert(0, str(Path(__file__).parent))
from newer_attacks_table import by_attack, finished_runs, label, print_table  # noqa: E402


def der(asr_before: float, asr_after: float, cta_before: float, cta_after: float) -> float:
    """BackdoorBench's defense effectiveness rating (Wu et al., NeurIPS 2022 Datasets and Benchmarks)."""
    return (max(0.0, asr_before - asr_after) - max(0.0, cta_before - cta_after) + 1) / 2


def load(run_dir: Path) -> dict | None:
    if not (run_dir / "metrics.json").is_file():
        return None
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    flare = run_dir / "defenses" / "flare.json"
    scan = run_dir / "scan" / "scan.json"
    return {
        "distill": config["distill"],
        "label": label(config),
        "seed": config["seed"],
        "target": config["poison"]["target"],
        "metrics": json.loads((run_dir / "metrics.json").read_text()),
        "flare": json.loads(flare.read_text()) if flare.is_file() else None,
        "scan": json.loads(scan.read_text()) if scan.is_file() else None,
        "name": run_dir.name,
    }


def mean_sd(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} +- {statistics.stdev(values):.3f}"


def victims(run: dict, key: str) -> str:
    return ", ".join(f"{v:.2f}" for v in run["metrics"][key]["values"])


def rdm_rows(runs: list[dict]) -> list[list[str]]:
    by = {(r["distill"], r["label"], r["seed"]): r for r in runs}
    rows = []
    for name in sorted({r["label"] for r in runs}):
        seeds = sorted(s for (d, n, s) in by if d == "rdm_dc" and n == name and ("dm", n, s) in by)
        if not seeds:
            continue
        dm = [by[("dm", name, s)] for s in seeds]
        rdm = [by[("rdm_dc", name, s)] for s in seeds]
        ders = [
            der(
                a["metrics"]["asr"]["mean"],
                b["metrics"]["asr"]["mean"],
                a["metrics"]["cta"]["mean"],
                b["metrics"]["cta"]["mean"],
            )
            for a, b in zip(dm, rdm, strict=True)
        ]
        rows.append(
            [
                name,
                ", ".join(map(str, seeds)),
                mean_sd([r["metrics"]["cta"]["mean"] for r in dm]),
                mean_sd([r["metrics"]["cta"]["mean"] for r in rdm]),
                mean_sd([r["metrics"]["asr"]["mean"] for r in dm]),
                "; ".join(victims(r, "asr") for r in dm),
                mean_sd([r["metrics"]["asr"]["mean"] for r in rdm]),
                "; ".join(victims(r, "asr") for r in rdm),
                ", ".join(f"{d:.2f}" for d in ders) if name != "none" else "-",
            ]
        )
    return rows


RDM_HEADER = [
    "attack",
    "seeds",
    "CTA, DM",
    "CTA, RDM-DC",
    "ASR, DM",
    "per victim (by seed)",
    "ASR, RDM-DC",
    "per victim (by seed)",
    "DER by seed",
]


def flare_rows(runs: list[dict]) -> list[list[str]]:
    rows = []
    for (distill, name), members in by_attack([r for r in runs if r["flare"] is not None]):
        real = [r["flare"]["sets"]["poisoned_real"] for r in members]
        syn = [r["flare"]["sets"]["synthetic"] for r in members]
        before = [r["flare"]["victim"]["metrics"] for r in members]
        after = [
            r["flare"].get("purified_synthetic", {}).get("metrics", b)
            for r, b in zip(members, before, strict=True)
        ]
        rows.append(
            [
                distill,
                name,
                ", ".join(str(r["seed"]) for r in members),
                ", ".join(f"{s['flagged']}" for s in real),
                ", ".join(
                    "-" if s["recall"] is None else f"{s['recall']:.2f}/{s['precision'] or 0:.2f}"
                    for s in real
                ),
                ", ".join(
                    f"{s['flagged']} ({s['flagged_per_class'][0] if s['flagged'] else 0})" for s in syn
                ),
                ", ".join(f"{b['cta']:.3f}->{a['cta']:.3f}" for b, a in zip(before, after, strict=True)),
                ", ".join(f"{b['asr']:.2f}->{a['asr']:.2f}" for b, a in zip(before, after, strict=True)),
                ", ".join(
                    f"{der(b['asr'], a['asr'], b['cta'], a['cta']):.2f}"
                    for b, a in zip(before, after, strict=True)
                ),
                f"{statistics.mean(r['flare']['seconds'] for r in members):.0f}",
            ]
        )
    return rows


FLARE_HEADER = [
    "distiller",
    "attack",
    "seeds",
    "real images flagged",
    "recall/precision",
    "synthetic flagged (of the target class)",
    "victim CTA before->after",
    "victim ASR before->after",
    "DER",
    "s/run",
]


def rdm_der(run: dict, by: dict) -> float | None:
    """RDM-DC's DER for an RDM-DC run, against DM's run of the same attack and seed (else None)."""
    dm = by.get(("dm", run["label"], run["seed"]))
    if run["distill"] != "rdm_dc" or dm is None:
        return None
    before, after = dm["metrics"], run["metrics"]
    return der(before["asr"]["mean"], after["asr"]["mean"], before["cta"]["mean"], after["cta"]["mean"])


def flare_der(run: dict) -> float | None:
    """FLARE's DER on the synthetic set: the run's first victim before and after purification."""
    if run["flare"] is None:
        return None
    before = run["flare"]["victim"]["metrics"]
    after = run["flare"].get("purified_synthetic", {}).get("metrics", before)
    return der(before["asr"], after["asr"], before["cta"], after["cta"])


def counted(values: list[float | None]) -> str:
    """The values measured (in seed order) with how many of the runs had one."""
    known = [v for v in values if v is not None]
    if not known:
        return "-"
    shown = ", ".join(f"{v:.2f}" for v in known)
    return shown if len(known) == len(values) else f"{shown} ({len(known)} of {len(values)})"


def scan_verdict(run: dict, calibration) -> tuple[bool, int]:
    """(flagged, suspected target) of the run's scan; a set of the calibration itself is judged by
    its leave-one-out score, as the calibration judged it (a run is known by its directory name)."""
    result = judge(run["scan"], calibration)
    names = [Path(source).name for source in calibration.sources]
    score = calibration.scores[names.index(run["name"])] if run["name"] in names else result["score"]
    return score > calibration.threshold, result["suspected_target"]


def receiver_rows(runs: list[dict], calibration) -> list[list[str]]:
    by = {(r["distill"], r["label"], r["seed"]): r for r in runs}
    rows = []
    for (distill, name), members in by_attack(runs):
        victims_asr = [v for r in members for v in r["metrics"]["asr"]["values"]]
        scanned = [(scan_verdict(r, calibration), r["target"]) for r in members if r["scan"] is not None]
        flagged = [suspected == target for (hit, suspected), target in scanned if hit]
        scan_text = f"{len(flagged)}/{len(scanned)}" if scanned else "-"
        if flagged and name != "none":
            scan_text += f" (target named {sum(flagged)})"
        rows.append(
            [
                distill,
                name,
                ", ".join(str(r["seed"]) for r in members),
                mean_sd([r["metrics"]["cta"]["mean"] for r in members]),
                mean_sd([r["metrics"]["asr"]["mean"] for r in members]),
                f"{sum(v >= 0.9 for v in victims_asr)}/{len(victims_asr)}",
                scan_text,
                counted([flare_der(r) for r in members]),
                counted([rdm_der(r, by) for r in members]) if distill == "rdm_dc" else "-",
            ]
        )
    return rows


RECEIVER_HEADER = [
    "distiller",
    "attack",
    "seeds",
    "CTA",
    "ASR",
    "victims at 0.9",
    "scan: flagged",
    "FLARE DER (synthetic)",
    "RDM-DC DER vs DM",
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweeps", nargs="+", type=Path)
    parser.add_argument("--calibration", type=Path, default=None, help="scan calibration (default: shipped)")
    args = parser.parse_args(argv)
    runs = finished_runs(args.sweeps, load)
    if not runs:
        print("no finished run under " + ", ".join(map(str, args.sweeps)), file=sys.stderr)
        return 2
    calibration = load_calibration(args.calibration)
    print(f"Every defense per attack (scan threshold {calibration.threshold:.3f})\n")
    print_table(RECEIVER_HEADER, receiver_rows(runs, calibration))
    print("\nRDM-DC against DM, same seeds\n")
    print_table(RDM_HEADER, rdm_rows(runs))
    print("\nFLARE on the run's poisoned real data and synthetic set\n")
    print_table(FLARE_HEADER, flare_rows(runs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
