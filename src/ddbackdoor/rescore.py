"""Which trigger does a synthetic set carry? Score a finished run against its earlier triggers.

DOORPING re-optimises the trigger during distillation, and the run's ASR is
measured with the last one. When ASR comes and goes between iterations, the
question is whether the synthetic set stopped carrying a backdoor or the
final trigger stopped matching the one it learned. `rescore` trains the run's
victims once on its final synthetic set (same seeds and protocol as its
evaluation) and scores every trigger that history.jsonl recorded.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from .artifacts import save_png, write_json
from .data.splits import load_run_data
from .errors import ArtifactError
from .evaluate import EvalSets, attack_metrics, fresh_victim, summarise, train_victim, victim_seeds
from .finished_run import load_run
from .reproducible import pinned_kernels, resolved_threads
from .run_setup import make_distiller, model_factory, resolve_device
from .triggers import Trigger


def recorded_triggers(run_dir: Path, base: Trigger) -> dict[int, Trigger]:
    """The trigger after each iteration that updated it (the last update of that iteration)."""
    path = Path(run_dir) / "history.jsonl"
    if not path.is_file():
        raise ArtifactError(
            f"{path} is missing; only runs that record their trigger updates can be re-scored"
        )
    found: dict[int, list] = {}
    box: dict[int, list[int]] = {}
    for line in path.read_text().splitlines():
        record = json.loads(line)
        if (
            record.get("kind") == "trigger_update"
            and record.get("iteration") is not None
            and "patch" in record
        ):
            found[int(record["iteration"])] = record["patch"]
            box[int(record["iteration"])] = record["box"]
    if not found:
        raise ArtifactError(f"{path} records no trigger update (a DOORPING run records one per update)")
    triggers = {}
    for iteration, values in sorted(found.items()):
        pattern = torch.zeros_like(base.pattern)
        start, stop = box[iteration]
        patch = torch.tensor(values, dtype=pattern.dtype)
        pattern[:, start:stop, start:stop] = patch.clamp(0, 1) if base.clip else patch
        triggers[iteration] = base.with_pattern(pattern)
    return triggers


def pick(triggers: dict[int, Trigger], iterations: list[int] | None) -> dict[int, Trigger]:
    if not iterations:
        return triggers
    missing = [i for i in iterations if i not in triggers]
    if missing:
        raise ArtifactError(
            f"no trigger recorded at iteration(s) {missing}; recorded: {min(triggers)}..{max(triggers)}"
        )
    return {i: triggers[i] for i in iterations}


def rescore(run_dir: Path, iterations: list[int] | None = None, device: str | None = None) -> dict:
    """ASR of the run's victims under each recorded trigger; writes RUN/rescore.json and .png."""

    run_dir = Path(run_dir)
    run = load_run(run_dir, device)
    with pinned_kernels(
        run.config.reproducible, resolved_threads(run.config.threads, run.config.reproducible)
    ):  # the victims evaluation trained
        return _rescore(run_dir, run, iterations)


def _rescore(run_dir: Path, run, iterations: list[int] | None) -> dict:
    cfg = run.config
    triggers = pick(recorded_triggers(run_dir, run.trigger), iterations)
    dev = resolve_device(cfg.device)
    data = load_run_data(cfg)
    train, test = data.train, data.test
    make_net = model_factory(cfg, train, dev)
    distiller = make_distiller(cfg, lambda: make_net(cfg.network), progress=False)
    trainer = distiller.victim_trainer() or train_victim
    synthetic = run.synthetic
    synthetic.images, synthetic.labels = synthetic.images.to(dev), synthetic.labels.to(dev)
    victims = []
    for arch in cfg.eval.victims or [cfg.network]:
        for seed in victim_seeds(cfg.seed, cfg.eval.num_victims):
            net = fresh_victim(make_net, arch, seed)
            victims.append(trainer(net, synthetic, cfg.eval, torch.Generator().manual_seed(seed)))
    per_trigger: dict[int, list[float]] = {}
    for i, trigger in triggers.items():  # one stamped test set at a time: a paper run records 9,000
        sets = EvalSets.build(test, trigger, dev)
        scores = [attack_metrics(net, sets, cfg.eval.test_batch) for net in victims]
        per_trigger[i] = [s["asr"] for s in scores]
    cta = [s["cta"] for s in scores]
    result = {
        "run": str(run_dir),
        "final_asr": run.metrics["asr"],
        "cta": summarise(cta),
        "by_trigger_iteration": {str(i): summarise(v) for i, v in per_trigger.items()},
    }
    write_json(run_dir / "rescore.json", result)
    save_png(run_dir / "rescore.png", plot(per_trigger, cfg.iterations))
    return result


def plot(
    per_trigger: dict[int, list[float]], iterations: int, width: int = 640, height: int = 320
) -> Image.Image:
    """ASR (mean, and each victim as a dot) of the final synthetic set against the trigger's iteration."""
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    left, right, top, bottom = 50, width - 20, 20, height - 40
    draw.rectangle([left, top, right, bottom], outline="black")
    span = max(iterations, max(per_trigger, default=1), 1)

    def xy(iteration: float, asr: float) -> tuple[float, float]:
        return left + (right - left) * iteration / span, bottom - (bottom - top) * asr

    for level in (0.0, 0.5, 0.9, 1.0):
        y = xy(0, level)[1]
        draw.line([left, y, right, y], fill=(220, 220, 220))
        draw.text((5, y - 6), f"{level:.1f}", fill="black")
    means = [xy(i, float(np.mean(v))) for i, v in sorted(per_trigger.items())]
    for i, values in per_trigger.items():
        for value in values:
            x, y = xy(i, value)
            draw.ellipse([x - 2, y - 2, x + 2, y + 2], fill=(150, 150, 255))
    if len(means) > 1:
        draw.line(means, fill=(200, 0, 0), width=2)
    draw.text(
        (left + 5, top + 4),
        "ASR of the victims of the final synthetic set (dots: victims, line: mean)",
        fill="black",
    )
    draw.text((left, bottom + 8), f"iteration whose trigger is stamped (0 .. {span})", fill="black")
    return image


def format_rescore(result: dict) -> str:
    lines = [f"{'trigger of iteration':>21}  {'ASR':>15}  per-victim ASR"]
    for iteration, summary in result["by_trigger_iteration"].items():
        victims = ", ".join(f"{v:.3f}" for v in summary["values"])
        lines.append(f"{iteration:>21}  {summary['mean']:.3f} +- {summary['std']:.3f}  {victims}")
    return "\n".join(lines)
