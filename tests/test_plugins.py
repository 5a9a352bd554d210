"""Third-party attacks, distillers and defenses through entry points. The example package under
tests/plugin_example (the code docs/extending.md walks through) is installed with pip, without the
network, and used end to end from the command line; the registry's errors are checked in-process."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from importlib.metadata import EntryPoint
from pathlib import Path

import pytest
import yaml
from safetensors import safe_open

from ddbackdoor import registry
from ddbackdoor.attacks import ATTACKS, NaiveAttack
from ddbackdoor.defenses import Defense, Options
from ddbackdoor.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
PLUGIN = Path(__file__).resolve().parent / "plugin_example"


@pytest.fixture(scope="module")
def plugin_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example plugin installed into a directory of its own (built from a copy, so the build
    leaves nothing in the repository)."""
    source = tmp_path_factory.mktemp("plugin-source") / "plugin_example"
    shutil.copytree(PLUGIN, source)
    site = tmp_path_factory.mktemp("plugin-site")
    pip = [
        sys.executable,
        "-m",
        "pip",
        "install",
        "--quiet",
        "--no-deps",
        "--no-build-isolation",
        "--no-index",
    ]
    result = subprocess.run(
        [*pip, "--target", str(site), str(source)], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    return site


def ddbackdoor(*args: str, site: Path | None = None) -> subprocess.CompletedProcess:
    paths = [str(site)] if site is not None else []
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([*paths, os.environ.get("PYTHONPATH", "")])}
    command = [sys.executable, "-m", "ddbackdoor", *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)


def test_list_shows_the_plugins_with_their_package(plugin_site: Path) -> None:
    shown = ddbackdoor("list", "attacks", "defenses", site=plugin_site)
    assert shown.returncode == 0, shown.stderr
    assert "corner_patch" in shown.stdout and "(from package ddbackdoor-example-plugin)" in shown.stdout
    assert "corner_patch.value=0.75 corner_patch.corner=top_left" in shown.stdout
    assert "fine_tune" in shown.stdout and "epochs=10 lr=0.01 batch=64" in shown.stdout
    assert "corner_patch" not in ddbackdoor("list", "attacks").stdout  # not installed: not there


def test_plugin_attack_runs_and_its_defense_defends(plugin_site: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = [
        "run",
        "profile=smoke",
        "attack=corner_patch",
        "corner_patch.value=0.5",
        "--out",
        str(out),
        "--quiet",
    ]
    done = ddbackdoor(*args, site=plugin_site)
    assert done.returncode == 0, done.stderr
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["attack"] == "corner_patch"
    assert config["corner_patch"] == {"value": 0.5, "corner": "top_left"}  # its section is recorded
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["attack"]["poisoned"] == 60 and len(metrics["asr"]["values"]) == 2
    with safe_open(str(out / "synthetic.safetensors"), framework="pt") as handle:
        pattern, mask = handle.get_tensor("trigger_pattern"), handle.get_tensor("trigger_mask")
    assert mask.sum() == 4 and mask[0, 1:3, 1:3].all()  # a 2x2 square, top-left, one pixel in
    assert set(pattern[mask.expand_as(pattern) > 0].tolist()) == {0.5}
    resumed = ddbackdoor(*args, site=plugin_site)  # the same command reports the finished run
    assert resumed.returncode == 0 and "run directory" in resumed.stdout

    defended = ddbackdoor(
        "defend", str(out), "--defense", "fine_tune", "fine_tune.epochs=2", "--quiet", site=plugin_site
    )
    assert defended.returncode == 0, defended.stderr
    result = json.loads((out / "defenses" / "fine_tune.json").read_text())
    assert result["kind"] == "model" and result["options"]["epochs"] == 2
    assert set(result["before"]) >= {"cta", "asr"} and set(result["after"]) >= {"cta", "asr"}


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["corner_patch.value=2"], "corner_patch.value"),
        (["corner_patch.shade=1"], "unknown config key 'corner_patch.shade'"),
    ],
)
def test_plugin_options_are_validated(plugin_site: Path, args: list[str], needle: str) -> None:
    done = ddbackdoor("run", "profile=smoke", "attack=corner_patch", *args, site=plugin_site)
    assert done.returncode == 2 and needle in done.stderr and len(done.stderr.strip().splitlines()) == 1


def test_without_the_package_the_name_is_unknown() -> None:
    done = ddbackdoor("run", "profile=smoke", "attack=corner_patch")
    assert done.returncode == 2 and "unknown attack 'corner_patch'" in done.stderr


class _Renamed(NaiveAttack):
    name = "not_its_key"


def _entry(name: str, value: str) -> EntryPoint:
    return EntryPoint(name, value, "ddbackdoor.attacks")


@pytest.mark.parametrize(
    ("entry", "needle"),
    [
        (_entry("naive", "ddbackdoor.attacks:NaiveAttack"), "reuses the name of a built-in attack"),
        (_entry("broken", "no_such_module_anywhere:Thing"), "cannot load attack plugin 'broken'"),
        (_entry("wrong", "ddbackdoor.defenses:DEFENSES"), "must name a subclass of ddbackdoor.attacks.base"),
        (_entry("my_key", "test_plugins:_Renamed"), "set name = 'my_key'"),
    ],
)
def test_a_bad_plugin_is_one_line_naming_it(monkeypatch: pytest.MonkeyPatch, entry: EntryPoint, needle: str):
    monkeypatch.setattr(
        registry, "entry_points", lambda group: [entry] if group == "ddbackdoor.attacks" else []
    )
    ATTACKS.reload()
    try:
        with pytest.raises(ConfigError) as info:
            list(ATTACKS)
    finally:
        monkeypatch.undo()
        ATTACKS.reload()
    assert needle in str(info.value) and "\n" not in str(info.value)
    assert "naive" in ATTACKS  # the real registry is back


def test_a_defense_result_missing_its_kinds_keys_is_refused() -> None:
    defense = Defense("half", "model", Options, lambda *args: {"before": {}})
    with pytest.raises(ConfigError, match="returned no after"):
        defense.check_result(defense.run())
    assert defense.check_result({"before": {}, "after": {}, "extra": 1})["extra"] == 1
    with pytest.raises(ConfigError, match="kind must be one of"):
        Defense("odd", "weights", Options, lambda *args: {})


def test_extending_doc_shows_the_example_code() -> None:
    """docs/extending.md walks through exactly the code this test installs."""
    doc = (ROOT / "docs" / "extending.md").read_text()
    for path in ("pyproject.toml", "src/ddbackdoor_example/attack.py", "src/ddbackdoor_example/defense.py"):
        assert (PLUGIN / path).read_text().strip() in doc, path
