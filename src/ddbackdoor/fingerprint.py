"""Fingerprints: SHA-256 of what a few seconds-long runs produce, to check reproducible mode.

Each case is a `smoke` run on the bundled data; its fingerprint covers every tensor of the
synthetic set (images, labels, trigger, learned lrs) and every victim's CTA / ASR. Pinned
kernels give the same fingerprints on any x86-64 host with AVX2 (tests/test_reproducible.py
keeps them); the host's own kernel choice gives others (`ddbackdoor fingerprint --unpinned`).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from .artifacts import load_tensors, tensor_digest
from .experiment import run_experiment
from .resolve import build_config

# The DOORPING cases use the authors' 1000 trigger steps and seed 1, whose selected unit is alive
# (at seed 0 it is dead, the trigger never moves, and clipped and unclipped would coincide).
DOORPING = ["attack=doorping", "doorping.max_steps=1000", "seed=1"]

# name -> overrides of the smoke profile; one thread, so the fingerprint names one computation
CASES: dict[str, list[str]] = {
    "dc-clean": ["attack=none"],
    "dc-naive": ["attack=naive"],
    "dc-doorping": DOORPING,
    "dc-doorping-unclipped": [*DOORPING, "poison.clip=false"],
    "dsa-doorping": ["distill=dsa", *DOORPING],
    # one stream for attack and distiller, as every run before `paired` existed: these keep the
    # fingerprints recorded then, so `paired=false` reproduces the numbers measured that way
    "dc-naive-unpaired": ["attack=naive", "paired=false"],
    "dsa-doorping-unpaired": ["distill=dsa", *DOORPING, "paired=false"],
}
COMMON = ["threads=1", "iterations=3"]


def run_fingerprint(run_dir: Path) -> str:
    """SHA-256 over a finished run's synthetic set and its victims' per-victim metrics."""
    tensors, _ = load_tensors(Path(run_dir) / "synthetic.safetensors")
    metrics = json.loads((Path(run_dir) / "metrics.json").read_text())
    victims = {key: metrics[key]["values"] for key in ("cta", "asr", "asr_all")}
    return tensor_digest(tensors, json.dumps(victims, sort_keys=True))


def fingerprint_case(name: str, reproducible: bool = True) -> str:
    """Run case `name` from scratch in a temporary directory and fingerprint it."""
    overrides = [*COMMON, *CASES[name], f"reproducible={str(reproducible).lower()}"]
    config = build_config({"profile": "smoke"}, overrides)
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / name
        run_experiment(config, run_dir, progress=False)
        return run_fingerprint(run_dir)
