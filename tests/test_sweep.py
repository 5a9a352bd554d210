"""`ddbackdoor sweep`: expansion, ids, executors that agree, and a killed sweep that continues."""

import csv
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from ddbackdoor.errors import ConfigError, UserError
from ddbackdoor.sweeps import expand, load_sweep, run_sweep
from ddbackdoor.sweeps.results import TIMING_COLUMNS


def write_sweep(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


# one thread a run: left at 0, a run gets the sweep's share of the cores (both, at --jobs 1), and
# beside `make test`'s other worker its two threads stalled each other (the killed-sweep test: 58 s
# alone, 549 s so)
SMOKE = {"profile": "smoke", "device": "cpu", "data.image_size": 16, "threads": 1}
FOUR_RUNS = {
    "base": SMOKE,
    "cases": [{"attack": "naive"}, {"attack": "doorping", "poison.clip": False}],
    "seeds": [0, 1],
}


def table(out: Path) -> list[dict[str, str]]:
    with (out / "results.csv").open(newline="") as handle:
        return [{k: v for k, v in row.items() if k not in TIMING_COLUMNS} for row in csv.DictReader(handle)]


def test_grid_list_zip_cases_and_seeds_expand_to_distinct_runs(tmp_path):
    sweep = write_sweep(
        tmp_path / "s.yaml",
        {
            "base": {"profile": "smoke", "attack": "naive"},
            "cases": [{"attack": "naive"}, {"attack": "doorping"}],
            "grid": [
                {"poison.trigger_size": [2, 3], "poison.portion": [0.01]},
                {"poison.trigger_size": [2], "poison.portion": [0.01, 0.1]},  # (2, 0.01) twice
            ],
            "zip": {"ipc": [1, 2], "iterations": [3, 4]},
            "seeds": [0, 1],
        },
    )
    runs = expand(*load_sweep(sweep))
    assert len(runs) == 2 * 3 * 2 * 2  # 4 grid cells, one repeated: 3
    assert len({run.id for run in runs}) == len(runs)
    first = runs[0]
    assert first.overrides == {
        "attack": "naive",
        "poison.trigger_size": 2,
        "poison.portion": 0.01,
        "ipc": 1,
        "iterations": 3,
        "seed": 0,
    }
    assert (first.config.poison.trigger_size, first.config.ipc, first.config.iterations) == (2, 1, 3)
    # grid cells outermost: both attacks appear before the second cell
    assert [run.overrides["attack"] for run in runs[:8]] == ["naive"] * 4 + ["doorping"] * 4
    # ids depend on the resolved config only: the same sweep expands to the same ids
    assert [run.id for run in expand(*load_sweep(sweep))] == [run.id for run in runs]


def test_bad_sweep_files_are_one_line_errors(tmp_path):
    with pytest.raises(ConfigError, match="same length"):
        load_sweep(write_sweep(tmp_path / "a.yaml", {"zip": {"ipc": [1, 2], "seed": [0]}}))
    with pytest.raises(ConfigError, match="unknown_key|Extra inputs"):
        load_sweep(write_sweep(tmp_path / "b.yaml", {"unknown_key": 1}))
    with pytest.raises(ConfigError, match="non-empty list"):
        expand(*load_sweep(write_sweep(tmp_path / "c.yaml", {"grid": {"ipc": []}})))
    with pytest.raises(ConfigError, match="unknown attack"):
        expand(*load_sweep(write_sweep(tmp_path / "d.yaml", {"cases": [{"attack": "nope"}]})))
    with pytest.raises(UserError, match="unknown executor"):
        run_sweep(write_sweep(tmp_path / "e.yaml", FOUR_RUNS), tmp_path / "out", executor="slurm")


@pytest.fixture(scope="module")
def local_sweep(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("sweep")
    sweep = write_sweep(root / "four.yaml", FOUR_RUNS)
    rows = run_sweep(sweep, root / "local", jobs=2, progress=False)
    assert [row["status"] for row in rows] == ["finished"] * 4, [row["error"] for row in rows]
    return root


def test_local_sweep_writes_one_row_per_run_with_per_victim_values(local_sweep):
    rows = table(local_sweep / "local")
    assert len(rows) == 4
    for row in rows:
        metrics = json.loads((local_sweep / "local" / row["run_dir"] / "metrics.json").read_text())
        assert row["cta_values"] == ";".join(f"{v:.6f}" for v in metrics["cta"]["values"])
        assert float(row["asr_mean"]) == pytest.approx(metrics["asr"]["mean"])
        assert int(row["victims"]) == 2 and row["device"] == "cpu" and row["error"] == ""
    assert {row["attack"] for row in rows} == {"naive", "doorping"}
    pq = pytest.importorskip("pyarrow.parquet")
    parquet = pq.read_table(local_sweep / "local" / "results.parquet").to_pylist()
    assert [row["asr_mean"] for row in parquet] == [float(row["asr_mean"]) for row in rows]
    # a sweep's run is the run typed by hand: same config file, same numbers
    run_dir = local_sweep / "local" / rows[0]["run_dir"]
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["seed"] == int(rows[0]["seed"]) and config["attack"] == rows[0]["attack"]


def test_the_same_sweep_again_skips_every_finished_run(local_sweep):
    out = local_sweep / "local"
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("runs/*/metrics.json")}
    started = time.perf_counter()
    rows = run_sweep(local_sweep / "four.yaml", out, jobs=2, progress=False)
    assert time.perf_counter() - started < 5  # no run process started
    assert [row["status"] for row in rows] == ["finished"] * 4
    assert {p: p.stat().st_mtime_ns for p in out.glob("runs/*/metrics.json")} == stamps


def test_ray_executor_gives_the_local_results(local_sweep):
    pytest.importorskip("ray")
    rows = run_sweep(local_sweep / "four.yaml", local_sweep / "ray", executor="ray", jobs=2, progress=False)
    assert [row["status"] for row in rows] == ["finished"] * 4, [row["error"] for row in rows]
    assert table(local_sweep / "ray") == table(local_sweep / "local")


def test_a_failed_run_is_a_row_and_does_not_stop_the_sweep(tmp_path):
    sweep = write_sweep(
        tmp_path / "s.yaml",
        {
            "base": {**SMOKE, "attack": "naive", "data.root": str(tmp_path / "missing")},
            "cases": [{"dataset": "cifar10"}, {"dataset": "fashion-mnist-mini"}],
        },
    )
    rows = run_sweep(sweep, tmp_path / "out", progress=False)
    assert [row["status"] for row in rows] == ["failed", "finished"]
    assert "cifar10" in rows[0]["error"].lower() or "missing" in rows[0]["error"]


def sweep_command(sweep: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "ddbackdoor", "sweep", str(sweep), "--out", str(out), "--quiet"]


def test_a_sweep_killed_in_its_second_run_continues_with_what_is_left(tmp_path):
    slow = {
        "base": {**SMOKE, "iterations": 8, "checkpoint.every": 1},
        "cases": [{"attack": "naive"}],
        "seeds": [0, 1, 2],
    }
    sweep = write_sweep(tmp_path / "slow.yaml", slow)
    runs = expand(*load_sweep(sweep))
    out = tmp_path / "killed"
    process = subprocess.Popen(sweep_command(sweep, out), stderr=subprocess.PIPE, text=True)
    second = out / "runs" / runs[1].id / "checkpoints"
    deadline = time.monotonic() + 300
    while not any(second.glob("iter-*.safetensors")) and time.monotonic() < deadline:
        assert process.poll() is None, process.stderr.read()
        time.sleep(0.01)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 130, stderr
    assert "run the same command again" in stderr
    assert [row["status"] for row in table(out)] == ["finished", "interrupted", "pending"]
    first_metrics = out / "runs" / runs[0].id / "metrics.json"
    stamp = first_metrics.stat().st_mtime_ns

    again = subprocess.run(sweep_command(sweep, out), capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    assert first_metrics.stat().st_mtime_ns == stamp  # the finished run did not run again
    resumed = json.loads((out / "runs" / runs[1].id / "metrics.json").read_text())
    assert resumed["resumed_from"] is not None and resumed["resumed_from"] >= 1

    whole = tmp_path / "whole"
    subprocess.run(sweep_command(sweep, whole), check=True, capture_output=True, timeout=600)
    assert table(out) == table(whole)


def test_two_sweep_files_in_one_directory_share_results_csv(tmp_path):
    one = write_sweep(tmp_path / "one.yaml", {"base": {**SMOKE, "attack": "none"}, "seeds": [0]})
    two = write_sweep(tmp_path / "two.yaml", {"base": SMOKE, "cases": [{"attack": "naive"}], "seeds": [0]})
    run_sweep(one, tmp_path / "out", progress=False)
    rows = run_sweep(two, tmp_path / "out", progress=False)
    assert len(rows) == 1  # this sweep's runs
    listed = table(tmp_path / "out")
    assert [row["status"] for row in listed] == ["finished", "finished"]
    assert [row["attack"] for row in listed] == ["naive", "none"]  # the clean run came from `one`
    assert listed[1]["seed"] == "0"


def test_run_ids_survive_a_new_config_key_with_a_default(monkeypatch, tmp_path):
    from ddbackdoor import identity
    from ddbackdoor.config import ExperimentConfig

    runs = expand(*load_sweep(write_sweep(tmp_path / "s.yaml", FOUR_RUNS)))
    real_dump = ExperimentConfig.model_dump

    def with_new_key(self, **kwargs):  # as if a later version added `poison.new_knob: 0`
        data = real_dump(self, **kwargs)
        data["poison"] = {**data["poison"], "new_knob": 0}
        return data

    monkeypatch.setattr(ExperimentConfig, "model_dump", with_new_key)
    assert [identity.config_hash(run.config) for run in runs] == [run.id.rsplit("_", 1)[1] for run in runs]
    # a value that differs from the defaults still changes the id
    other = runs[0].config.model_copy(update={"seed": 99})
    assert identity.config_hash(other) != identity.config_hash(runs[0].config)


def test_a_default_that_changed_behaviour_gives_new_runs_new_ids(monkeypatch):
    """Before `seeded.typical` (default true) existed, attack=seeded ran with a random start: those
    runs keep their ids, a typical-start run gets another, and runs of other attacks keep theirs."""
    from ddbackdoor import identity
    from ddbackdoor.config import ExperimentConfig
    from ddbackdoor.mappings import with_overrides
    from ddbackdoor.resolve import build_config

    configs = {
        name: build_config(with_overrides({}, {**SMOKE, **overrides}))
        for name, overrides in {
            "typical": {"attack": "seeded"},
            "random": {"attack": "seeded", "seeded.typical": False},
            "clean": {"attack": "none"},
        }.items()
    }
    now = {name: identity.config_hash(config) for name, config in configs.items()}
    real_dump = ExperimentConfig.model_dump

    def before_the_key(self, **kwargs):
        data = real_dump(self, **kwargs)
        data["seeded"] = {k: v for k, v in data["seeded"].items() if k != "typical"}
        return data

    monkeypatch.setattr(ExperimentConfig, "model_dump", before_the_key)
    then = identity.config_hash(configs["random"]), identity.config_hash(configs["clean"])
    assert (now["random"], now["clean"]) == then
    assert now["typical"] != now["random"]
