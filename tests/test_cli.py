"""The command line: exit status 2 with one line for bad input, a full run directory otherwise."""

import json
import subprocess
import sys

import pytest
import yaml
from safetensors import safe_open

from ddbackdoor import __version__
from ddbackdoor.attacks import ATTACKS
from ddbackdoor.cli import build_parser, main
from ddbackdoor.config import ExperimentConfig, Section
from ddbackdoor.distill import DISTILLERS
from ddbackdoor.profiles import PROFILES


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ddbackdoor.cli", *args], capture_output=True, text=True, timeout=300
    )


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["run", "dataset=nope"], "unknown dataset 'nope'"),
        (
            ["run", "attack=zap"],
            "accepted: blend, doorping, inkdrop, invisible, naive, none, poisoned_distillation, "
            "relax_trigger, seeded, sneakdoor, target_patch",
        ),
        (["run", "poison.portion=-1"], "poison.portion"),
        (["run", "ipc=0"], "ipc"),
        (["run", "poison.trigger_size=64"], "trigger_size"),
        (["run", "/no/such/config.yaml"], "cannot read config file '/no/such/config.yaml'"),
    ],
)
def test_bad_input_exits_2_with_one_line(args, needle, capsys):
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err
    assert len(err.splitlines()) == 1
    assert "Traceback" not in err


def test_run_help_names_every_profile_section_distiller_and_attack():
    """The help text is built from the registries when asked for, so it names whatever is added."""
    run = build_parser()._subparsers._group_actions[0].choices["run"]
    text = " ".join(run.format_help().split())
    sections = [
        name
        for name, field in ExperimentConfig.model_fields.items()
        if isinstance(field.annotation, type) and issubclass(field.annotation, Section)
    ]
    assert f"Profiles: {', '.join(PROFILES)}." in text
    assert sections and all(f"{name}.*" in text for name in sections), sections
    distillers = text.split("Distillers: ")[1].split(".")[0]
    attacks = text.split("Attacks: ")[1].split(".")[0]
    assert sorted(distillers.split(", ")) == sorted(DISTILLERS)
    assert sorted(attacks.split(", ")) == sorted(ATTACKS)
    assert "attack=doorping" in text and "dataset=fashion-mnist-mini" in text  # the defaults


def test_help_builds_no_registry_before_it_is_asked_for():
    """Parsing a command imports no registry: torch must wait for the kernel pins of `run`."""
    code = (
        "import sys; from ddbackdoor.cli import build_parser; "
        "build_parser().parse_args(['run', 'profile=smoke']); print('torch' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == "False", done.stderr


def test_version_and_list(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"ddbackdoor {__version__}"
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for kind in ("profiles:", "datasets:", "networks:", "distillers:", "attacks:", "defenses:"):
        assert kind in out
    assert "doorping.alpha=10.0" in out and "fashion-mnist-mini" in out and "neural_cleanse" in out
    assert main(["list", "nets"]) == 2 and "unknown kind 'nets'" in capsys.readouterr().err


def test_malformed_yaml_file(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("ipc: [1, 2\n")
    assert main(["run", str(bad)]) == 2
    assert "not valid YAML" in capsys.readouterr().err


def test_smoke_run_writes_every_artifact(tmp_path):
    out = tmp_path / "run"
    result = run_cli("run", "profile=smoke", "attack=doorping", "--out", str(out), "--quiet")
    assert result.returncode == 0, result.stderr
    for name in (
        "config.yaml",
        "metrics.json",
        "history.jsonl",
        "synthetic.safetensors",
        "synthetic.png",
        "trigger.png",
        "run.log",
    ):
        assert (out / name).is_file(), name
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["profile"] == "smoke" and config["seed"] == 0 and config["attack"] == "doorping"
    assert {"torch", "git_revision", "ddbackdoor"} <= set(config["provenance"])
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("cta", "asr", "asr_all"):
        assert 0 <= metrics[key]["mean"] <= 1 and len(metrics[key]["values"]) == 2
    assert metrics["seconds"] > 0 and metrics["attack"]["poisoned"] == 60
    assert metrics["attack"]["trigger_updates"] > 0
    assert main(["inspect", str(out / "synthetic.safetensors")]) == 0  # verified by its SHA-256
    other = run_cli("run", "profile=smoke", "attack=naive", "--out", str(out), "--quiet")
    assert other.returncode == 2 and "another config (first difference: attack" in other.stderr
    assert len(other.stderr.strip().splitlines()) == 1
    again = run_cli("run", "profile=smoke", "attack=doorping", "--out", str(out), "--quiet")
    assert again.returncode == 0 and "run directory" in again.stdout  # a finished run is reported
    assert json.loads((out / "metrics.json").read_text()) == metrics  # the earlier result is intact
    with safe_open(str(out / "synthetic.safetensors"), framework="pt") as handle:
        assert set(handle.keys()) == {"images", "labels", "trigger_pattern", "trigger_mask"}
        assert handle.get_tensor("images").shape == (20, 1, 32, 32)
        assert json.loads(handle.metadata()["json"])["attack"] == "doorping"
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["iter-000002.safetensors"]


def test_same_seed_same_synthetic_set(tmp_path):
    from ddbackdoor.experiment import run_experiment
    from ddbackdoor.resolve import build_config

    def images(seed: int, name: str):
        config = build_config({"profile": "smoke"}, [f"seed={seed}", "attack=doorping"])
        run_experiment(config, tmp_path / name, progress=False)
        with safe_open(str(tmp_path / name / "synthetic.safetensors"), framework="pt") as handle:
            return handle.get_tensor("images"), handle.get_tensor("trigger_pattern")

    first, second, other = images(0, "a"), images(0, "b"), images(1, "c")
    assert all((x == y).all() for x, y in zip(first, second, strict=True))
    assert not (first[0] == other[0]).all()


def test_where_the_data_is_changes_neither_the_run_id_nor_the_resume(tmp_path):
    """data.root and data.download say where the data comes from, not what runs."""
    from ddbackdoor.experiment import run_experiment
    from ddbackdoor.identity import config_hash
    from ddbackdoor.resolve import build_config

    config = build_config({"profile": "smoke", "attack": "none"})
    first = run_experiment(config, tmp_path / "run", progress=False)
    moved = build_config(
        {"profile": "smoke", "attack": "none"}, ["data.download=false", f"data.root={tmp_path / 'elsewhere'}"]
    )
    assert config_hash(moved) == config_hash(config)
    assert run_experiment(moved, tmp_path / "run", progress=False) == first  # reported, not refused
    other = build_config({"profile": "smoke", "attack": "none", "seed": 1})
    assert config_hash(other) != config_hash(config)
