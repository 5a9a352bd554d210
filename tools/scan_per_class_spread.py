"""A calibration variant with a spread per class, built from kept scan measurements.

The shipped scanner divides every class's excess by one spread pooled over the classes. On the 40
clean sets of docs/evidence/scan-clean-sets the bag class (8) varies 1.3-1.5 times more than the
pooled spread, and it is the class every false alarm named. This variant gives each class its own
spread, shrunk towards the pooled one as if PRIOR more sets had measured the pooled spread (PRIOR
= 40: the class's own spread and the pooled one weigh about alike), and its threshold is the
(1 - budget) quantile of the leave-one-out scores, as `calibrate` does. It writes an ordinary
calibration file (`ddbackdoor scan --calibration FILE` and tools/scan_table.py read it); the
scanner itself is unchanged. An exploration, not the shipped design: see docs/scan.md.

    python tools/scan_per_class_spread.py SCAN_JSON... --out FILE [--prior 40]
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

import numpy as np

from ddbackdoor.scan import calibrate
from ddbackdoor.scan.scanner import PRIOR_SETS, _relative, suspicion


def per_class_reference(results: list[dict], prior: float) -> dict:
    """Like the scanner's reference, but each class's spread its own, shrunk to the pooled one."""
    reference = {}
    for name in results[0]["signals"]:
        stacked = np.stack([_relative(r, name) for r in results])
        n = stacked.shape[0]
        mean = stacked.mean(0) * n / (n + PRIOR_SETS)
        own = ((stacked - mean) ** 2).sum(0) / (n - 1)
        shrunk = np.sqrt((prior * own.mean() + (n - 1) * own) / (prior + n - 1))
        reference[name] = {"mean": mean.tolist(), "std": shrunk.tolist()}
    return reference


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scans", nargs="+", type=Path, help="clean sets' scan.json files")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--prior", type=float, default=40.0)
    args = parser.parse_args()
    results = [json.loads(path.read_text()) for path in args.scans]
    pooled = calibrate(results)  # also refuses attacked sets and mixed options
    scores = []
    for i, held_out in enumerate(results):
        others = per_class_reference(results[:i] + results[i + 1 :], args.prior)
        scores.append(float(np.sum(list(suspicion(held_out, others).values()), axis=0).max()))
    threshold = float(np.quantile(scores, 1 - pooled.budget, method="higher"))
    reference = per_class_reference(results, args.prior)
    replace(pooled, threshold=threshold, scores=scores, reference=reference).save(args.out)
    print(f"per-class spread (prior {args.prior:g}): threshold {threshold:.3f}, {len(results)} clean sets")
    print(f"pooled spread: threshold {pooled.threshold:.3f}")


if __name__ == "__main__":
    main()
