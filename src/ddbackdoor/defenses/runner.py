"""`ddbackdoor defend RUN_DIR`: rebuild what a finished run hands out, then apply defenses to it.

The runner reads only the run directory (config, synthetic set, trigger,
metrics). It retrains the run's first victim exactly as evaluation did (same
seed, same distiller-specific protocol), redraws the poison set the run used
(same generator sequence as `Experiment.setup` / `prepare`, stamped with the
final trigger) and gives every defense a fresh generator seeded from the
run's seed, so a defense's result does not depend on which others ran.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import torch
from pydantic import Field
from torch import nn
from tqdm.auto import tqdm

from ..artifacts import save_png, write_json
from ..attacks import ATTACKS, attack_generator
from ..config_build import parse_override
from ..data import RealData
from ..data.splits import load_run_data
from ..distill import RealPool, SyntheticSet
from ..errors import ArtifactError, ConfigError, unknown_name
from ..evaluate import EvalSets, attack_metrics, train_victim, victim_seeds
from ..finished_run import RunInputs, load_run
from ..reproducible import pinned_kernels, resolved_threads
from ..run_setup import make_distiller, model_factory, resolve_device
from . import DEFENSES
from .base import DefenseData, LabelledImages, Options, clean_subset, parse_options

log = logging.getLogger("ddbackdoor")

CLEAN_SOURCE = "clean real training images, drawn uniformly with the run's seed"
FEATURES_FROM = "penultimate layer of the victim trained on the run's synthetic set"
VICTIM_INDEX = 0  # the run's first victim, seeded as `evaluate` seeds it


class RunnerOptions(Options):
    """Options of the runner itself (plain keys, no defense prefix)."""

    clean_fraction: float = Field(0.05, gt=0, le=1)
    device: str | None = None
    threads: int = Field(0, ge=0)


def select_defenses(spec: str) -> list[str]:
    """'all' or a comma-separated list of registered names, in the order given."""
    names = list(DEFENSES) if spec.strip() == "all" else [n.strip() for n in spec.split(",") if n.strip()]
    if not names:
        raise ConfigError("no defense named; give --defense NAME[,NAME...] or --defense all")
    for name in names:
        if name not in DEFENSES:
            raise unknown_name("defense", name, [*DEFENSES, "all"])
    return list(dict.fromkeys(names))


def split_options(names: list[str], items: list[str]) -> tuple[RunnerOptions, dict[str, Options]]:
    """key=value items -> runner options and validated options per defense.

    `NAME.key=value` sets one defense's option; a plain `key=value` is a runner
    option or, failing that, applies to every selected defense that has the key.
    """
    runner: dict[str, Any] = {}
    per: dict[str, dict[str, Any]] = {name: {} for name in names}
    for item in items:
        path, value = parse_override(item)
        if len(path) == 2:
            if path[0] not in DEFENSES:
                raise unknown_name("defense", path[0], list(DEFENSES))
            if path[0] not in per:
                raise ConfigError(f"option {item!r} is for defense {path[0]}, which is not selected")
            per[path[0]][path[1]] = value
        elif len(path) == 1 and path[0] in RunnerOptions.model_fields:
            runner[path[0]] = value
        elif len(path) == 1:
            owners = [n for n in names if path[0] in DEFENSES[n].options.model_fields]
            if not owners:
                raise ConfigError(
                    f"unknown option {path[0]!r}: no selected defense ({', '.join(names)}) takes it and it "
                    f"is not a runner option ({', '.join(RunnerOptions.model_fields)})"
                )
            for owner in owners:
                per[owner][path[0]] = value
        else:
            raise ConfigError(f"option {item!r} has too many dots; use key=value or NAME.key=value")
    runner_opts = parse_options("defend", RunnerOptions, runner)
    return runner_opts, {name: parse_options(name, DEFENSES[name].options, per[name]) for name in names}


def train_run_victim(
    run: RunInputs, train: RealData, device: torch.device, keep: torch.Tensor | None = None
) -> tuple[nn.Module, dict]:
    """The run's first victim, retrained with the run's seed and the distiller's victim protocol;
    on the synthetic rows `keep` only, when given (a purified set)."""
    cfg = run.config
    make_net = model_factory(cfg, train, device)
    arch = (cfg.eval.victims or [cfg.network])[0]
    seed = victim_seeds(cfg.seed, VICTIM_INDEX + 1)[VICTIM_INDEX]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = make_net(arch)
    distiller = make_distiller(cfg, lambda: make_net(cfg.network), progress=False)
    trainer = distiller.victim_trainer() or train_victim
    rows = slice(None) if keep is None else keep.cpu()
    synthetic = SyntheticSet(
        run.synthetic.images[rows].to(device),
        run.synthetic.labels[rows].to(device),
        None if run.synthetic.lrs is None else run.synthetic.lrs.to(device),
        run.synthetic.metadata,
        {k: v.to(device) for k, v in run.synthetic.extras.items()},
    )
    trainer(net, synthetic, cfg.eval, torch.Generator().manual_seed(seed))
    net.eval()
    return net, {
        "network": arch,
        "seed": seed,
        "trained_on": "the run's synthetic set"
        if keep is None
        else f"{len(keep)} of the run's synthetic images",
        "epochs": cfg.eval.epochs,
    }


def purified_scores(
    run: RunInputs, train: RealData, tests: EvalSets, flagged: list[int], device: torch.device
) -> dict:
    """A victim trained, as the run's first was, on the synthetic set less the flagged images,
    scored as the attack tables score victims: what a receiver who removed them gets."""
    if run.synthetic.lrs is not None or run.synthetic.extras:
        return {"scored": False, "why": f"a {run.config.distill} set is not a list of independent images"}
    drop = torch.zeros(run.synthetic.labels.shape[0], dtype=torch.bool)
    drop[torch.tensor(flagged, dtype=torch.long)] = True
    victim, info = train_run_victim(run, train, device, torch.nonzero(~drop).flatten())
    return {"scored": True, "removed": len(flagged), **info, "metrics": attack_metrics(victim, tests)}


def poisoned_pool(run: RunInputs, train: RealData, device: torch.device) -> tuple[RealPool, torch.Tensor]:
    """The real training data as the distiller last saw it, and which rows were poisoned.

    Same generator sequence as `Experiment.setup` then `attack.prepare`: the
    attack is built on the run's attack stream (`attack_generator`; DOORPING
    draws its initial patch from it), then the poison set is drawn; the rows
    are re-stamped with the run's final trigger.
    """
    cfg = run.config
    attack = ATTACKS[cfg.attack](cfg, train, attack_generator(cfg, torch.Generator().manual_seed(cfg.seed)))
    pool = RealPool(
        train.normalize(train.images).to(device), train.labels.clone().to(device), train.num_classes
    )
    attack.prepare(pool)
    attack.trigger = run.trigger.to(device)
    attack.restamp(pool)
    poison = torch.zeros(len(train), dtype=torch.bool)
    poison[attack.poison_index.cpu()] = True
    expected = run.metrics.get("attack", {}).get("poisoned")
    if expected is not None and int(expected) != int(poison.sum()):
        raise ArtifactError(
            f"the run reports {expected} poisoned images but its config gives {int(poison.sum())}; "
            "the run directory and this version of ddbackdoor disagree"
        )
    return pool, poison


def build_inputs(run: RunInputs, opts: RunnerOptions, device: torch.device, progress: bool):
    cfg = run.config
    torch.manual_seed(cfg.seed)
    data = load_run_data(cfg)  # the rows the run distilled from (less its validation set), and its test set
    train, test = data.train, data.test
    if progress:
        tqdm.write(f"training the run's first victim on its synthetic set ({cfg.eval.epochs} epochs)")
    victim, victim_info = train_run_victim(run, train, device)
    tests = EvalSets.build(test, run.trigger, device)
    victim_info["metrics"] = attack_metrics(victim, tests)
    recorded = run.metrics.get("per_victim", [{}])[VICTIM_INDEX]
    victim_info["run_metrics"] = {k: recorded.get(k) for k in ("cta", "asr", "asr_all")}
    pool, poison = poisoned_pool(run, train, device)
    clean = clean_subset(
        train.normalize(train.images).to(device),
        train.labels.to(device),
        opts.clean_fraction,
        torch.Generator().manual_seed(cfg.seed),
    )
    synthetic = LabelledImages(run.synthetic.images.to(device), run.synthetic.labels.to(device))
    data = DefenseData(
        clean=clean,
        tests=tests,
        mean=train.mean,
        std=train.std,
        num_classes=train.num_classes,
        trigger=run.trigger.to(device),
        inspect={
            "poisoned_real": LabelledImages(pool.images, pool.labels, poison.to(device)),
            "synthetic": synthetic,
        },
        poison_portion=cfg.poison.portion,
        progress=progress,
    )
    return victim, victim_info, data, train


def save_result(out: Path, name: str, result: dict) -> dict:
    """Write NAME.json (and NAME_<picture>.png); returns the JSON content."""
    pictures = result.pop("pictures", {})
    files = {}
    for key, picture in pictures.items():
        path = out / f"{name}_{key}.png"
        save_png(path, picture)
        files[key] = path.name
    result["pictures"] = files
    write_json(out / f"{name}.json", result)
    return result


def run_defenses(
    run_dir: str | Path, spec: str, items: list[str] | None = None, progress: bool = True
) -> dict[str, dict]:
    """The Python API behind `ddbackdoor defend`: results by name, also written to RUN_DIR/defenses/."""
    names = select_defenses(spec)
    opts, per = split_options(names, items or [])
    run = load_run(Path(run_dir), opts.device)
    with pinned_kernels(
        run.config.reproducible, resolved_threads(opts.threads, run.config.reproducible)
    ):  # as reproducible as the run itself
        return _defend(run, Path(run_dir), names, opts, per, progress)


def _defend(
    run: RunInputs, run_dir: Path, names: list[str], opts: RunnerOptions, per: dict, progress: bool
) -> dict[str, dict]:
    device = resolve_device(run.config.device)
    victim, victim_info, data, train = build_inputs(run, opts, device, progress)
    out = run_dir / "defenses"
    results = {}
    for name in names:
        started = time.perf_counter()
        log.info("defense %s", name)
        defense = DEFENSES[name]
        result = defense.check_result(
            defense.run(victim, data, per[name], torch.Generator().manual_seed(run.config.seed))
        )
        synthetic = result["sets"].get("synthetic", {}) if defense.kind == "data" else {}
        if synthetic.get("flagged"):
            flagged = synthetic["flagged_indices"]
            result["purified_synthetic"] = purified_scores(run, train, data.tests, flagged, device)
        record = {
            "defense": name,
            "kind": defense.kind,
            "options": per[name].model_dump(),
            "run": {"attack": run.config.attack, "distill": run.config.distill, "seed": run.config.seed},
            "victim": victim_info,
            "clean_set": {"fraction": opts.clean_fraction, "size": len(data.clean), "source": CLEAN_SOURCE},
            "features_from": FEATURES_FROM if defense.kind == "data" else None,
            **result,
            "seconds": time.perf_counter() - started,
        }
        results[name] = save_result(out, name, record)
    return results


def headline(result: dict) -> str:
    """One cell per defense for the table: its verdict in a few words."""
    return HEADLINES[result["kind"]](result)


def _model_headline(result: dict) -> str:
    if "flagged_classes" in result:
        return f"flagged {result['flagged_classes'] or 'none'} (target {result['true_target']})"
    if "pruned" in result:
        return f"pruned {result['pruned']}/{result['channels']} channels"
    return "distilled"


def _data_headline(result: dict) -> str:
    parts = []
    for name, report in result["sets"].items():
        score = "".join(
            f" {label} {report[key]:.2f}"
            for label, key in (("R", "recall"), ("P", "precision"))
            if report.get(key) is not None
        )
        verdict = f" {report['verdict']}" if "verdict" in report else ""
        parts.append(f"{name}: {report['flagged']}/{report['size']}{score}{verdict}")
    purified = result.get("purified_synthetic", {})
    if purified.get("scored"):
        after = purified["metrics"]
        parts.append(
            f"victim without the flagged synthetic images: CTA {after['cta']:.3f}, ASR {after['asr']:.3f}"
        )
    return "; ".join(parts)


HEADLINES = {
    "model": _model_headline,
    "input": lambda r: f"AUROC {r['auroc']:.3f}, FAR {r['far']:.3f} @ FRR {r['frr']:.3f}",
    "data": _data_headline,
}


def format_table(results: dict[str, dict]) -> str:
    lines = [f"{'defense':<22} {'CTA before->after':>18} {'ASR before->after':>18}  verdict"]
    for name, result in results.items():
        cta = asr = "-"
        if "after" in result:
            b, a = result["before"], result["after"]
            cta, asr = f"{b['cta']:.3f}->{a['cta']:.3f}", f"{b['asr']:.3f}->{a['asr']:.3f}"
        lines.append(f"{name:<22} {cta:>18} {asr:>18}  {headline(result)}")
    return "\n".join(lines)
