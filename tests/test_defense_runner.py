"""`ddbackdoor defend`: a finished run in, NAME.json (and pictures) out; bad input is one line."""

import json

import pytest
import torch

from ddbackdoor.cli import main
from ddbackdoor.defenses.runner import run_defenses, select_defenses, split_options
from ddbackdoor.errors import ConfigError
from ddbackdoor.experiment import run_experiment
from ddbackdoor.resolve import build_config


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A NAIVEATTACK smoke run at 16x16 with one 5-epoch victim: seconds, and a real run directory."""
    out = tmp_path_factory.mktemp("defend") / "run"
    overrides = [
        "attack=naive",
        "iterations=1",
        "data.image_size=16",
        "eval.num_victims=1",
        "poison.portion=0.05",
    ]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run_experiment(build_config({"profile": "smoke"}, overrides), out, progress=False)
    finally:
        torch.set_num_threads(threads)
    return out


def test_writes_one_json_per_defense_and_rebuilds_the_runs_victim(finished_run):
    torch.set_num_threads(1)
    items = ["strip.overlays=4", "strip.inputs=20"]
    results = run_defenses(finished_run, "strip,spectral_signatures", items, progress=False)
    assert list(results) == ["strip", "spectral_signatures"]
    metrics = json.loads((finished_run / "metrics.json").read_text())
    for name in results:
        saved = json.loads((finished_run / "defenses" / f"{name}.json").read_text())
        assert saved["defense"] == name
        victim = saved["victim"]
        for key in ("cta", "asr"):  # the same seed and protocol give the run's first victim back
            assert victim["metrics"][key] == pytest.approx(metrics["per_victim"][0][key], abs=1e-6)
    strip = json.loads((finished_run / "defenses" / "strip.json").read_text())
    assert strip["options"]["overlays"] == 4
    assert (finished_run / "defenses" / strip["pictures"]["entropy_histogram"]).is_file()
    saved = json.loads((finished_run / "defenses" / "spectral_signatures.json").read_text())
    screened = saved["sets"]
    assert screened["poisoned_real"]["poisoned"] == metrics["attack"]["poisoned"] == 300
    assert screened["synthetic"]["size"] == 20 and screened["synthetic"]["recall"] is None
    # what it flagged in the synthetic set is removed, and a victim trained without it is scored
    purified = saved["purified_synthetic"]
    kept = 20 - screened["synthetic"]["flagged"]
    assert purified["scored"] and purified["removed"] == screened["synthetic"]["flagged"] > 0
    assert (
        purified["trained_on"] == f"{kept} of the run's synthetic images"
        and purified["seed"] == victim["seed"]
    )
    assert set(purified["metrics"]) >= {"cta", "asr"} and 0 <= purified["metrics"]["cta"] <= 1


def test_flare_screens_the_poisoned_real_set_and_the_synthetic_set(finished_run):
    torch.set_num_threads(1)
    result = run_defenses(finished_run, "flare", [], progress=False)["flare"]
    sets = result["sets"]
    assert sets["poisoned_real"]["poisoned"] == 300 and sets["poisoned_real"]["size"] == 6000
    assert sets["poisoned_real"]["layers"] == 4  # the ConvNet's 3 convolutions and its hidden Linear
    assert sets["synthetic"]["verdict"] == "not flagged"  # 20 images: too few for two clusters of 5
    assert json.loads((finished_run / "defenses" / "flare.json").read_text())["sets"] == sets


def test_names_and_options_are_validated():
    assert select_defenses("all")[0] == "neural_cleanse" and len(select_defenses("all")) == 7
    assert select_defenses("strip, nad,strip") == ["strip", "nad"]
    runner, per = split_options(["strip", "nad"], ["batch=32", "strip.frr=0.05", "clean_fraction=0.1"])
    assert runner.clean_fraction == 0.1
    assert per["strip"].batch == per["nad"].batch == 32 and per["strip"].frr == 0.05
    with pytest.raises(ConfigError, match="unknown option 'nope' for strip; accepted: batch, blend"):
        split_options(["strip"], ["strip.nope=1"])
    with pytest.raises(ConfigError, match="nad, which is not selected"):
        split_options(["strip"], ["nad.epochs=1"])
    with pytest.raises(ConfigError, match="frr"):
        split_options(["strip"], ["strip.frr=2"])


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--defense", "zap"], "unknown defense 'zap'; accepted: activation_clustering, all,"),
        (["--defense", "strip", "strip.nope=1"], "unknown option 'nope' for strip"),
        (["--defense", "strip", "warp=9"], "unknown option 'warp'"),
    ],
)
def test_cli_rejects_bad_input_in_one_line(finished_run, args, needle, capsys):
    assert main(["defend", str(finished_run), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1


def test_cli_rejects_a_directory_that_is_not_a_finished_run(tmp_path, capsys):
    assert main(["defend", str(tmp_path / "nowhere"), "--defense", "strip"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["defend", str(tmp_path), "--defense", "strip"]) == 2
    assert "is not a finished run (missing config.yaml" in capsys.readouterr().err
