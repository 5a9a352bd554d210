"""A verdict on a synthetic set: its signals, per class, against what clean sets look like.

`scan` measures (the expensive part, cached in scan.json); `judge` compares. For every signal a
class's value is taken relative to the set's median class, then standardised against the same
class in the calibration's clean sets (their mean, shrunk; the spread pooled over classes,
floored); the one-sided excess on the suspicious side, capped at 10, is the class's suspicion
under that signal. A class's
score is the sum over signals, the set's score its most suspicious class's, and that class is the
suspected target.

The threshold comes only from clean sets (`calibrate`): each clean set is scored against the
reference of the *other* clean sets (leave-one-out, so the threshold is not measured on the data
that defines normal), and the threshold is the (1 - budget) quantile of those scores; with at
most 1 / budget clean sets, that is their maximum (a new clean set beats it about once in n + 1,
on average over calibrations: docs/scan.md). The set's own metadata (which attack made it, if it
says) is copied into the result to score the scanner, and never read by it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np

from ..artifacts import write_json
from ..errors import ArtifactError, ConfigError
from .signals import SCORING, SIGNALS, ScanContext, ScanOptions, relative
from .source import ScanInput

DEFAULT_BUDGET = 0.05
DEFAULT_CALIBRATION = "calibration.json"  # shipped with the package; how it was made: docs/scan.md
SUSPICION_CAP = 10.0  # one signal alone cannot outvote the others by more than this
MIN_CLEAN_SETS = 3
PRIOR_SETS = 3  # shrinkage of a class's clean mean towards the set's median class


@dataclass
class Calibration:
    """Per signal and class, the clean sets' mean and spread (of values relative to each set's
    median class); the threshold; the clean sets' leave-one-out scores; the scanner's options;
    what each clean set's own metadata recorded (so that anyone can check no attacked set is in
    it; empty in files written before it was kept)."""

    threshold: float
    budget: float
    scores: list[float]
    sources: list[str]
    options: dict
    reference: dict  # signal -> {"mean": [per class], "std": [per class]}
    recorded: list[dict] = field(default_factory=list)  # per source: attack, distiller, seed, ...

    def save(self, path: Path) -> None:
        write_json(path, asdict(self))

    def check(self, opts: ScanOptions) -> None:
        if opts.model_dump(mode="json") != self.options:
            raise ConfigError(
                "the calibration was measured with other scanner options "
                f"({self.options}); calibrate again with these options or scan with those"
            )


def load_calibration(path: Path | None = None) -> Calibration:
    """A calibration file, or the one shipped with the package when `path` is None."""
    try:
        if path is None:
            text = resources.files(__package__).joinpath(DEFAULT_CALIBRATION).read_text()
        else:
            text = Path(path).read_text()
        return Calibration(**json.loads(text))
    except FileNotFoundError:
        name = path or f"{__package__}/{DEFAULT_CALIBRATION} (shipped)"
        raise ArtifactError(
            f"calibration {name} does not exist; make one with `ddbackdoor scan --calibrate`"
        ) from None
    except (OSError, ValueError, TypeError) as err:
        raise ArtifactError(f"calibration {path} is not a calibration file ({type(err).__name__})") from None


def scan(found: ScanInput, opts: ScanOptions, progress: Callable | None = None) -> dict:
    """Every signal's values on `found` (no verdict yet: `judge` gives it)."""
    ctx = ScanContext(found, opts, progress)
    signals = [SIGNALS[name](ctx) for name in opts.signals]
    masks = next((s.evidence.pop("masks") for s in signals if "masks" in s.evidence), {})
    return {
        "source": found.source,
        "kind": found.kind,
        "set_sha256": found.digest(),
        "images_per_class": found.per_class,
        "signals": {s.name: {"values": s.values, **s.evidence} for s in signals},
        "options": opts.model_dump(mode="json"),
        "recorded": {
            k: found.metadata[k] for k in ("attack", "target", "distill", "seed") if k in found.metadata
        },
        "_masks": masks,  # tensors for the picture; `public` drops them
    }


def _relative(result: dict, name: str) -> np.ndarray:
    present = np.asarray(result["images_per_class"]) > 0
    return relative(result["signals"][name]["values"], present, SCORING[name])


def suspicion(result: dict, reference: dict) -> dict[str, np.ndarray]:
    """Per signal, each class's one-sided standardised excess over the clean reference."""
    present = np.asarray(result["images_per_class"]) > 0
    out = {}
    for name, stats in reference.items():
        scoring = SCORING[name]
        mean, std = np.asarray(stats["mean"]), np.maximum(np.asarray(stats["std"]), scoring.floor)
        if mean.shape[0] != present.shape[0]:
            raise ConfigError(
                f"{result['source']} has {present.shape[0]} classes, the calibration {mean.shape[0]}; "
                "calibrate on clean sets of the same dataset"
            )
        z = (_relative(result, name) - mean) / std
        z = z if scoring.larger_is_suspicious else -z
        out[name] = np.where(present, np.clip(z, 0.0, SUSPICION_CAP), 0.0)
    return out


def judge(result: dict, calibration: Calibration) -> dict:
    """`result` with its per-class suspicion, score, suspected target and verdict."""
    per_signal = suspicion(result, calibration.reference)
    per_class = np.sum(list(per_signal.values()), axis=0)
    suspected = int(np.argmax(per_class))
    score = float(per_class[suspected])
    signals = {
        name: {**entry, "suspicion": per_signal[name].tolist()} for name, entry in result["signals"].items()
    }
    return {
        **result,
        "verdict": "backdoored" if score > calibration.threshold else "clean",
        "score": score,
        "threshold": calibration.threshold,
        "suspected_target": suspected,
        "class_scores": per_class.tolist(),
        "signals": signals,
    }


def cached(path: Path, found: ScanInput, opts: ScanOptions) -> dict | None:
    """An earlier scan.json of the same set with the same options, or None."""
    try:
        earlier = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    same = earlier.get("set_sha256") == found.digest() and earlier.get("options") == opts.model_dump(
        mode="json"
    )
    return earlier if same else None


def public(result: dict) -> dict:
    """The result without its tensors: what scan.json holds."""
    return {k: v for k, v in result.items() if not k.startswith("_")}


def reference_of(results: list[dict]) -> dict:
    """Per signal: each class's mean relative value over the clean sets, shrunk towards 0 (the
    set's median class) as if PRIOR_SETS more sets had measured 0, and one spread around those
    means pooled over the classes (a class's own spread from a handful of sets is too noisy to
    divide by)."""
    reference = {}
    for name in results[0]["signals"]:
        stacked = np.stack([_relative(r, name) for r in results])
        n = stacked.shape[0]
        mean = stacked.mean(0) * n / (n + PRIOR_SETS)
        pooled = float(np.sqrt(((stacked - mean) ** 2).sum(0).mean() / (n - 1)))
        reference[name] = {"mean": mean.tolist(), "std": [pooled] * stacked.shape[1]}
    return reference


def calibrate(results: list[dict], budget: float = DEFAULT_BUDGET) -> Calibration:
    """Reference and threshold from clean sets' scan results; a set that records an attack is refused."""
    if not 0 < budget < 1:
        raise ConfigError(f"false-alarm budget {budget} is not between 0 and 1")
    if len(results) < MIN_CLEAN_SETS:
        raise ConfigError(f"calibration needs at least {MIN_CLEAN_SETS} clean sets, got {len(results)}")
    attacked = [r for r in results if r["recorded"].get("attack", "none") != "none"]
    if attacked:
        first = attacked[0]
        raise ConfigError(
            f"{first['source']} records attack {first['recorded']['attack']!r}: the threshold is set on "
            "clean sets only; leave attacked sets out of --calibrate"
        )
    if len({json.dumps(r["options"], sort_keys=True) for r in results}) > 1:
        raise ConfigError("the clean sets were scanned with different options; scan them alike")
    sizes = {len(r["images_per_class"]) for r in results}
    if len(sizes) > 1:
        raise ConfigError(f"the clean sets have different numbers of classes ({sorted(sizes)})")
    scores = []
    for i, held_out in enumerate(results):
        others = reference_of(results[:i] + results[i + 1 :])
        scores.append(float(np.sum(list(suspicion(held_out, others).values()), axis=0).max()))
    threshold = float(np.quantile(scores, 1 - budget, method="higher"))
    sources = [r["source"] for r in results]
    recorded = [r["recorded"] for r in results]
    options, reference = results[0]["options"], reference_of(results)
    return Calibration(threshold, budget, scores, sources, options, reference, recorded)
