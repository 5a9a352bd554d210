"""What makes two configs the same run: the spec alone. Runtime options (logging, checkpoint
cadence, threads, where the data is, memory) change no run id and never block a resume; the
spec's keys (seed, poison.portion...) do; configs from earlier versions read as what they ran."""

from __future__ import annotations

import pytest
import torch
from helpers import stop_after_first_iteration

from ddbackdoor.artifacts import load_tensors
from ddbackdoor.config import ExperimentConfig
from ddbackdoor.errors import ConfigError, UserError
from ddbackdoor.experiment import run_experiment
from ddbackdoor.identity import config_hash, runtime_keys, upgrade
from ddbackdoor.resolve import build_config

SMOKE = {"profile": "smoke", "attack": "doorping", "iterations": 3}
PINNED_SMOKE = {**SMOKE, "reproducible": True}
RUNTIME_CHANGES = ["log.tensorboard=true", "checkpoint.every=1", "threads=2", "retain_freed_memory=false"]


def test_the_runtime_keys_are_the_declared_ones():
    assert runtime_keys(ExperimentConfig) == {
        "data.root",
        "data.download",
        "checkpoint",
        "log",
        "threads",
        "retain_freed_memory",
    }


@pytest.mark.parametrize("change", RUNTIME_CHANGES)
def test_a_runtime_option_keeps_the_run_id(change):
    assert config_hash(build_config(SMOKE, [change])) == config_hash(build_config(SMOKE))


@pytest.mark.parametrize("change", ["seed=1", "poison.portion=0.02", "reproducible=true", "eval.epochs=6"])
def test_a_spec_key_changes_the_run_id(change):
    assert config_hash(build_config(SMOKE, [change])) != config_hash(build_config(SMOKE))


def test_an_interrupted_run_resumes_under_other_runtime_options_to_the_same_bits(tmp_path, monkeypatch):
    """Stopped after iteration 1 with one set of runtime options, resumed with others (in pinned
    mode, where the thread count is fixed at one): the same synthetic set as an uninterrupted run."""
    whole = run_experiment(
        build_config(PINNED_SMOKE, ["checkpoint.every=0"]), tmp_path / "whole", progress=False
    )
    stop_after_first_iteration(
        build_config(PINNED_SMOKE, ["checkpoint.every=0"]), tmp_path / "split", monkeypatch
    )
    resumed = run_experiment(build_config(PINNED_SMOKE, RUNTIME_CHANGES), tmp_path / "split", progress=False)
    assert resumed["resumed_from"] == 1
    ours, _ = load_tensors(tmp_path / "split" / "synthetic.safetensors")
    theirs, _ = load_tensors(tmp_path / "whole" / "synthetic.safetensors")
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs)
    assert resumed["asr"]["values"] == whole["asr"]["values"]
    assert (tmp_path / "split" / "tensorboard").is_dir()  # the new runtime options took effect


@pytest.mark.parametrize("change", ["seed=1", "poison.portion=0.02"])
def test_a_spec_change_is_refused_on_resume(tmp_path, change):
    run_experiment(build_config(SMOKE, ["iterations=1"]), tmp_path / "run", progress=False)
    with pytest.raises(UserError, match="holds a run with another config"):
        run_experiment(build_config(SMOKE, ["iterations=1", change]), tmp_path / "run", progress=False)


def test_a_removed_option_reads_at_its_default_and_refuses_otherwise():
    old = build_config({"profile": "smoke", "attack": "seeded"}).model_dump(mode="json")
    as_before = {**old, "seeded": {**old["seeded"], "split": False, "order": "random"}}
    assert upgrade(as_before) == old
    used = {**old, "seeded": {**old["seeded"], "split": True}}
    with pytest.raises(
        ConfigError, match="made with seeded.split=True, an option this version no longer has"
    ):
        upgrade(used)


def test_a_removed_option_is_an_unknown_key_in_a_new_config():
    with pytest.raises(ConfigError, match="unknown config key 'seeded.split'"):
        build_config({"profile": "smoke", "attack": "seeded"}, ["seeded.split=true"])
