"""Every shipped sweep preset expands into valid runs (names, values, shapes checked)."""

from pathlib import Path

import pytest

from ddbackdoor.sweeps import expand, load_sweep

PRESETS = sorted((Path(__file__).resolve().parents[1] / "configs").rglob("*.yaml"))


def test_presets_exist():
    names = {path.relative_to(path.parents[1]).as_posix() for path in PRESETS}
    assert {"paper/main_table.yaml", "quick/trigger_size.yaml", "quick/frontier.yaml"} <= names


@pytest.mark.parametrize("path", PRESETS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_preset_expands(path):
    runs = expand(*load_sweep(path))
    assert runs and len({run.id for run in runs}) == len(runs)
    profile = path.parent.name
    assert {run.config.profile for run in runs} == {profile}
    if profile == "paper":
        assert all(run.config.net.norm == "none" for run in runs if run.config.network == "convnet")
    # presets change the attack's own settings only on swept axes, or say so ("deviation")
    named = "deviation" in path.read_text()
    for run in runs:
        if "poison.trigger_size" not in run.overrides:
            assert run.config.poison.trigger_size == 2 or named
        if "poison.portion" not in run.overrides:
            assert run.config.poison.portion == 0.01 or named


def test_main_table_is_the_paper_grid():
    runs = expand(*load_sweep(next(p for p in PRESETS if p.name == "main_table.yaml")))
    assert len(runs) == 5 * 2 * 2 * 3
    assert {run.config.dataset for run in runs} == {"fashion-mnist", "cifar10", "cifar100", "stl10", "svhn"}
