"""The scanner's table: per attack and distiller, how many sets it flags and names the target of.

Reads the scan.json that `ddbackdoor scan` wrote into each run directory (RUN/scan/scan.json),
judges each against a calibration (default: the shipped one; a set of the calibration is scored
leave-one-out, as the calibration scored it), and prints a markdown table: sets, flagged, target
named (among the flagged), and every set's score. Which attack made a set is
read from the set's own metadata (scan.json's "recorded"), never by the scanner.

    python tools/scan_table.py RUN_DIR... [--calibration FILE] [--keep DIR]

`--keep DIR` copies each set's scan.json into DIR/RUN_NAME/scan/ without its verdict (the
signals and the set's metadata only), so the table rebuilds from DIR, judged afresh against
whichever calibration is given, after the runs are gone.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

from ddbackdoor.artifacts import write_json
from ddbackdoor.scan import judge, load_calibration

# what a kept scan.json holds: enough to judge it again, nothing of the verdict it was given
KEPT_FIELDS = ("source", "kind", "set_sha256", "images_per_class", "options", "recorded", "signals")


def keep(run: Path, scan: dict, out: Path) -> None:
    write_json(out / run.name / "scan" / "scan.json", {k: scan[k] for k in KEPT_FIELDS})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--calibration", type=Path, default=None)
    parser.add_argument("--keep", type=Path, help="copy each set's scan.json, without its verdict, here")
    args = parser.parse_args()
    calibration = load_calibration(args.calibration)
    used = [str(Path(s)) for s in calibration.sources]
    rows: dict[tuple[str, str, str], list[dict]] = defaultdict(list)
    for run in args.runs:
        scan = json.loads((run / "scan" / "scan.json").read_text())
        if args.keep:
            keep(run, scan, args.keep)
        result = judge(scan, calibration)
        recorded = result["recorded"]
        role = "calibration, leave-one-out" if str(run) in used else "held out"
        if str(run) in used:
            result["score"] = calibration.scores[used.index(str(run))]
        rows[(recorded.get("attack", "?"), recorded.get("distill", "?"), role)].append(result)
    print(f"threshold {calibration.threshold:.3f} (budget {calibration.budget}, {len(used)} clean sets)\n")
    print("| attack | distiller | sets | flagged | target named | scores (suspected class) |")
    print("|---|---|---|---|---|---|")
    for (attack, distill, role), results in sorted(rows.items()):
        flagged = [r for r in results if r["score"] > calibration.threshold]
        named = [r for r in flagged if r["suspected_target"] == r["recorded"].get("target")]
        scores = ", ".join(f"{r['score']:.2f} ({r['suspected_target']})" for r in results)
        label = f"{attack} ({role})" if attack == "none" else attack
        named_text = "-" if attack == "none" else f"{len(named)}/{len(flagged)}"
        print(f"| {label} | {distill} | {len(results)} | {len(flagged)} | {named_text} | {scores} |")


if __name__ == "__main__":
    main()
