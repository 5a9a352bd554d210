"""How much of an attack's ASR its trigger gets without any backdoor.

    python tools/trigger_on_clean.py CLEAN_RUN ATTACKED_RUN [ATTACKED_RUN ...]

Retrains the clean run's own victims (its seeds, its distiller's victim protocol, its mode) on its
synthetic set and scores them with each attacked run's trigger. A trigger optimised against a
surrogate of the victims' architecture (InkDrop's, SNEAKDOOR's) may fool clean networks by itself,
as an adversarial perturbation; the attacked run's ASR counts as a backdoor only above this.
The clean CTA printed must equal the clean run's (the same victims), which this checks.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from ddbackdoor import reproducible

reproducible.pin_environment()  # before anything imports torch, as the ddbackdoor command does

from ddbackdoor.evaluate import EvalSets, evaluate  # noqa: E402
from ddbackdoor.finished_run import load_run  # noqa: E402
from ddbackdoor.run_setup import set_up  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("clean", type=Path)
    parser.add_argument("attacked", type=Path, nargs="+")
    args = parser.parse_args(argv)
    clean = load_run(args.clean)
    config = clean.config
    threads = reproducible.resolved_threads(config.threads, config.reproducible)
    results = []
    with reproducible.pinned_kernels(config.reproducible, threads), tempfile.TemporaryDirectory() as work:
        parts = set_up(config, Path(work), progress=False)
        for run_dir in args.attacked:
            trigger = load_run(run_dir).trigger
            tests = EvalSets.build(parts.data.test, trigger, parts.device, config.eval.source_class)
            metrics = evaluate(
                clean.synthetic,
                tests,
                parts.make_net,
                config.eval.victims or [config.network],
                config.eval,
                config.seed,
                train=parts.distiller.victim_trainer(),
            )
            same = metrics["cta"]["values"] == clean.metrics["cta"]["values"]
            row = {
                "clean_run": str(args.clean),
                "trigger_of": str(run_dir),
                "cta": metrics["cta"]["values"],
                "cta_equals_clean_run": same,
                "asr": metrics["asr"]["values"],
                "asr_source": metrics.get("asr_source", {}).get("values"),
            }
            results.append(row)
            print(json.dumps(row))
    return 0 if all(r["cta_equals_clean_run"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
