"""Every shipped sweep file expands into valid runs (names, values, shapes checked), and the paper's
presets say which result they reproduce and run the DOORPING the paper's number depends on."""

from pathlib import Path

import pytest

from ddbackdoor.errors import ConfigError
from ddbackdoor.sweeps import expand, load_sweep

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
PRESETS = sorted(CONFIGS.rglob("*.yaml"))
PAPER = sorted((CONFIGS / "paper").glob("*.yaml"))


def test_presets_exist():
    names = {path.relative_to(CONFIGS).as_posix() for path in PRESETS}
    paper = {f"paper/{name}.yaml" for name in ("main_table", "defenses", "trigger_size", "poison_portion")}
    assert paper | {"paper/ipc.yaml", "paper/iterations.yaml", "paper/doorping_neuron.yaml"} <= names
    assert {
        "quick/trigger_size.yaml",
        "quick/frontier.yaml",
        "experiments/seeded_pick_decision.yaml",
    } <= names


RECORDS_ONLY = [p for p in PRESETS if p.read_text().startswith("# Record only:")]


@pytest.mark.parametrize("path", RECORDS_ONLY, ids=lambda p: p.name)
def test_a_record_of_a_removed_option_says_which_revision_runs_it(path):
    """A decision record whose option left the schema no longer expands: it names the option in
    one line, and its header names the revision that still runs it."""
    assert path.parent.name == "experiments" and "git checkout 2748f33" in path.read_text()
    with pytest.raises(ConfigError, match="unknown config key 'seeded[.]"):
        expand(*load_sweep(path))


@pytest.mark.parametrize(
    "path", [p for p in PRESETS if p not in RECORDS_ONLY], ids=lambda p: f"{p.parent.name}/{p.name}"
)
def test_preset_expands(path):
    runs = expand(*load_sweep(path))
    assert runs and len({run.id for run in runs}) == len(runs)
    folder = path.parent.name
    if folder != "experiments":  # decision records live apart; they run at `medium`
        assert {run.config.profile for run in runs} == {folder}
    if folder == "paper":
        assert all(run.config.net.norm == "none" for run in runs if run.config.network == "convnet")
    # presets change the attack's own settings only on swept axes, or say so ("deviation")
    named = "deviation" in path.read_text()
    for run in runs:
        if "poison.trigger_size" not in run.overrides:
            assert run.config.poison.trigger_size == 2 or named
        if "poison.portion" not in run.overrides:
            assert run.config.poison.portion == 0.01 or named


@pytest.mark.parametrize("path", PAPER, ids=lambda p: p.name)
def test_paper_preset_says_what_it_reproduces_and_runs_both_doorpings(path):
    header = path.read_text().split("\nbase:")[0]
    assert header.startswith("# Reproduces: the paper's") and "GPU cost" in header and "Deviation" in header
    doorping = [run.config for run in expand(*load_sweep(path)) if run.config.attack == "doorping"]
    assert doorping and {config.poison.clip for config in doorping} == {True, False}


def test_main_table_is_the_paper_grid():
    runs = expand(*load_sweep(CONFIGS / "paper" / "main_table.yaml"))
    assert len(runs) == 4 * 2 * 2 * 4
    assert {run.config.dataset for run in runs} == {"fashion-mnist", "cifar10", "stl10", "svhn"}
    assert {run.config.network for run in runs} == {"alexnet", "convnet"}
    assert {run.config.distill for run in runs} == {"dd", "dc"}


def test_sweep_overrides_reach_every_run_and_refuse_swept_keys(tmp_path):
    path = CONFIGS / "paper" / "main_table.yaml"
    runs = expand(*load_sweep(path, ["data.root=/data/here", "eval.num_victims=5"]))
    assert all(r.config.data.root == "/data/here" and r.config.eval.num_victims == 5 for r in runs)
    plain = {run.id: run for run in expand(*load_sweep(path))}
    # where the data is does not change what runs: same ids; a science setting does
    located = expand(*load_sweep(path, ["data.root=/data/here"]))
    assert [run.id for run in located] == list(plain)
    assert all(run.id not in plain for run in runs)
    with pytest.raises(ConfigError, match="override attack touches attack"):
        load_sweep(path, ["attack=naive"])
    with pytest.raises(ConfigError, match="override poison.clip touches poison.clip"):
        load_sweep(path, ["poison.clip=true"])
    assert {r.config.poison.portion for r in expand(*load_sweep(path, ["poison={portion: 0.05}"]))} == {0.05}
