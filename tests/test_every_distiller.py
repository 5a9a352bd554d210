"""Every distiller runs under every attack through the same hooks."""

import json

import pytest
import torch
from helpers import stop_after_first_iteration

from ddbackdoor.artifacts import load_tensors
from ddbackdoor.distill import DISTILLERS
from ddbackdoor.experiment import run_experiment
from ddbackdoor.resolve import build_config

ATTACKS = [
    "none",
    "naive",
    "doorping",
    "invisible",
    "relax_trigger",
    "blend",
    "seeded",
    "inkdrop",
    "sneakdoor",
]
# rematch re-optimises a finished set (data.from_run): tests/test_newer_attacks.py runs it
FROM_SCRATCH = sorted(set(DISTILLERS) - {"rematch"})
# InkDrop and SNEAKDOOR poison 70% of the top 20% of the 600-image source class
POISONED = {"none": 0, "inkdrop": 84, "sneakdoor": 84}


@pytest.mark.parametrize("attack", ATTACKS)
@pytest.mark.parametrize("distill", FROM_SCRATCH)
def test_smoke_run_of_every_distiller_under_every_attack(tmp_path, distill, attack):
    config = build_config({"profile": "smoke"}, [f"distill={distill}", f"attack={attack}", "threads=1"])
    metrics = run_experiment(config, tmp_path / "run", progress=False)
    tensors, meta = load_tensors(tmp_path / "run" / "synthetic.safetensors")
    classes = 10
    assert meta["distill"] == distill and meta["attack"] == attack
    assert tensors["images"].shape[0] == config.ipc * classes and torch.isfinite(tensors["images"]).all()
    assert sorted(tensors["labels"].tolist()) == sorted(list(range(classes)) * config.ipc)
    for key in ("cta", "asr"):
        assert len(metrics[key]["values"]) == config.eval.num_victims
        assert all(0 <= v <= 1 for v in metrics[key]["values"])
    poisoned = POISONED.get(attack, 60)
    assert metrics["attack"]["poisoned"] == poisoned
    if attack in ("doorping", "invisible") and distill != "kip":  # KIP trains no network
        assert metrics["attack"]["trigger_updates"] > 0  # the distiller handed DOORPING a network
    history = json.loads((tmp_path / "run" / "metrics.json").read_text())["history"]
    assert history[-1]["iteration"] == config.iterations


@pytest.mark.parametrize(("distill", "attack"), [(d, "doorping") for d in FROM_SCRATCH] + [("dc", "seeded")])
def test_every_distiller_resumes_bitwise_after_a_sigint(tmp_path, monkeypatch, distill, attack):
    overrides = [f"distill={distill}", f"attack={attack}", "iterations=3", "checkpoint.every=0", "threads=1"]
    config = build_config({"profile": "smoke"}, overrides)
    whole = run_experiment(config, tmp_path / "whole", progress=False)
    stop_after_first_iteration(config, tmp_path / "split", monkeypatch)
    resumed = run_experiment(config, tmp_path / "split", progress=False)

    assert resumed["resumed_from"] == 1
    ours, _ = load_tensors(tmp_path / "split" / "synthetic.safetensors")
    theirs, _ = load_tensors(tmp_path / "whole" / "synthetic.safetensors")
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs), distill
    assert resumed["cta"]["values"] == whole["cta"]["values"]
    assert json.dumps(resumed["attack"]) == json.dumps(whole["attack"])  # NaN-safe


@pytest.mark.parametrize("distill", ["dc", "dsa", "dm"])
def test_seeded_starts_the_target_class_from_a_stamped_image_of_another_class(tmp_path, distill):
    """Whatever the distiller's own start, SEEDED's first target-class synthetic image is one of the
    poisoned images: another class's object with the trigger, labelled the target."""
    from ddbackdoor.data import load_dataset
    from ddbackdoor.triggers import Trigger

    config = build_config({"profile": "smoke"}, [f"distill={distill}", "attack=seeded", "iterations=0"])
    metrics = run_experiment(config, tmp_path / "run", progress=False)
    tensors, meta = load_tensors(tmp_path / "run" / "synthetic.safetensors")
    train, _ = load_dataset("fashion-mnist-mini")
    first = train.denormalize(tensors["images"][tensors["labels"] == 0][0])
    source = metrics["attack"]["seeded_sources"][0]
    trigger = Trigger(tensors["trigger_pattern"], tensors["trigger_mask"], 0)
    stamped = trigger.stamp(train.images[train.labels == source])
    assert source != 0
    assert (stamped - first).abs().flatten(1).amax(1).min() < 1e-5  # one of them, to the rounding
