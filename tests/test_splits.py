"""The validation split: a stratified share of the training images, the same rows for every run,
never poisoned and never distilled; evaluation scores the victims on it too."""

from __future__ import annotations

import json

import torch

from ddbackdoor.data import load_dataset
from ddbackdoor.data.splits import load_run_data, validation_split
from ddbackdoor.experiment import run_experiment
from ddbackdoor.resolve import build_config


def test_a_stratified_share_of_every_class_held_out_the_same_way_every_time():
    train, _ = load_dataset("fashion-mnist-mini")
    rest, held = validation_split(train, 0.1)
    assert [len(i) for i in held.indices_by_class()] == [60] * 10
    assert [len(i) for i in rest.indices_by_class()] == [540] * 10
    again_rest, again = validation_split(train, 0.1)
    assert torch.equal(held.images, again.images) and torch.equal(rest.labels, again_rest.labels)
    together = torch.cat([rest.images, held.images]).flatten(1)
    assert torch.unique(together, dim=0).shape[0] == torch.unique(train.images.flatten(1), dim=0).shape[0]
    whole, none = validation_split(train, 0.0)
    assert whole is train and none is None


def test_the_split_does_not_depend_on_the_run():
    first = load_run_data(build_config({"profile": "smoke", "seed": 0}, ["data.val_portion=0.1"]))
    other = load_run_data(
        build_config({"profile": "smoke", "seed": 5, "attack": "naive"}, ["data.val_portion=0.1"])
    )
    assert torch.equal(first.validation.images, other.validation.images)
    assert len(first.train) == 5400 and len(first.test) == 1000


def test_a_run_with_a_validation_set_never_poisons_it_and_scores_it(tmp_path):
    config = build_config({"profile": "smoke", "attack": "naive"}, ["data.val_portion=0.1"])
    metrics = run_experiment(config, tmp_path / "run", progress=False)
    assert metrics["attack"]["poisoned"] == 54  # floor(0.01 * 5400): drawn from the rest only
    validation = metrics["validation"]
    assert len(validation["cta"]["values"]) == len(metrics["cta"]["values"]) == 2
    assert all(0 <= v <= 1 for v in validation["asr"]["values"])
    assert [v["val_cta"] for v in metrics["per_victim"]] == validation["cta"]["values"]
    history = [json.loads(line) for line in (tmp_path / "run" / "history.jsonl").read_text().splitlines()]
    assert "validation" in history[-1]


def test_a_run_without_one_reports_none(tmp_path):
    metrics = run_experiment(
        build_config({"profile": "smoke", "attack": "none"}), tmp_path / "run", progress=False
    )
    assert "validation" not in metrics and "val_cta" not in metrics["per_victim"][0]
