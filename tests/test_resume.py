"""Checkpoints and resume: a killed or interrupted run ends exactly where an uninterrupted one does."""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from ddbackdoor.artifacts import load_tensors
from ddbackdoor.checkpoint import list_checkpoints, load_latest
from ddbackdoor.distill import DCDistiller
from ddbackdoor.errors import ArtifactError, NumericalError
from ddbackdoor.experiment import run_experiment
from ddbackdoor.resolve import build_config

ITERATIONS = 6
ARGS = ["profile=smoke", f"iterations={ITERATIONS}", "checkpoint.every=1", "attack=doorping", "threads=1"]


def start(out: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "ddbackdoor.cli", "run", *ARGS, "--out", str(out), "--quiet"]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(out: Path) -> subprocess.CompletedProcess:
    process = start(out)
    stdout, stderr = process.communicate(timeout=600)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def wait_for_checkpoint(out: Path, iteration: int, process: subprocess.Popen) -> None:
    path = out / "checkpoints" / f"iter-{iteration:06d}.safetensors"
    deadline = time.monotonic() + 300
    while not path.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    assert process.poll() is None, f"the run ended before checkpoint {iteration}: {process.stderr.read()}"
    assert path.exists()


def final_tensors(out: Path) -> dict[str, torch.Tensor]:
    tensors, _ = load_tensors(out / "synthetic.safetensors")
    return tensors


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("resume") / "whole"
    result = finish(out)
    assert result.returncode == 0, result.stderr
    return out


def assert_same_run(out: Path, reference: Path) -> None:
    ours, theirs = final_tensors(out), final_tensors(reference)
    assert ours.keys() == theirs.keys()
    for name in ours:
        assert torch.equal(ours[name], theirs[name]), name  # bitwise on CPU
    metrics = json.loads((out / "metrics.json").read_text())
    expected = json.loads((reference / "metrics.json").read_text())
    for key in ("cta", "asr"):
        assert metrics[key]["values"] == expected[key]["values"]
    assert metrics["attack"]["trigger_updates"] == expected["attack"]["trigger_updates"]
    # every trigger update recorded once, as uninterrupted: none lost, none from a redone iteration
    history = (out / "history.jsonl").read_text()
    assert history == (reference / "history.jsonl").read_text()
    updates = [line for line in history.splitlines() if '"kind": "trigger_update"' in line]
    assert len(updates) == expected["attack"]["trigger_updates"] > 0


def test_sigkill_at_a_random_iteration_then_rerun_gives_the_same_synthetic_set(tmp_path, uninterrupted):
    kill_after = random.Random(os.getpid()).randint(1, ITERATIONS - 1)
    out = tmp_path / "killed"
    process = start(out)
    wait_for_checkpoint(out, kill_after, process)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    assert not (out / "metrics.json").exists()
    resumed = finish(out)
    assert resumed.returncode == 0, resumed.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["resumed_from"] is not None and metrics["resumed_from"] >= kill_after
    assert_same_run(out, uninterrupted)


def test_sigint_writes_a_checkpoint_and_says_how_to_resume(tmp_path, uninterrupted):
    out = tmp_path / "interrupted"
    process = start(out)
    wait_for_checkpoint(out, 1, process)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 130, stderr
    assert "run the same command again to resume" in stderr
    assert "Traceback" not in stderr
    stopped = load_latest(out)
    assert stopped is not None and 1 <= stopped.iteration < ITERATIONS
    assert not (out / "metrics.json").exists()
    resumed = finish(out)
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads((out / "metrics.json").read_text())["resumed_from"] == stopped.iteration
    assert_same_run(out, uninterrupted)


def test_restart_discards_checkpoints(tmp_path):
    config = build_config({"profile": "smoke"}, ["iterations=2", "attack=naive", "checkpoint.every=1"])
    out = tmp_path / "run"
    first = run_experiment(config, out, progress=False)
    assert [p.name for p in list_checkpoints(out)] == ["iter-000002.safetensors"]
    assert run_experiment(config, out, progress=False) == first  # finished: reported, not rerun
    again = run_experiment(config, out, progress=False, restart=True)
    assert again["resumed_from"] is None and again["cta"]["values"] == first["cta"]["values"]


def test_a_damaged_checkpoint_is_named_and_never_loaded(tmp_path):
    config = build_config({"profile": "smoke"}, ["iterations=2", "attack=naive"])
    out = tmp_path / "run"
    run_experiment(config, out, progress=False)
    (out / "metrics.json").unlink()  # as if the run had died during its final evaluation
    path = list_checkpoints(out)[0]
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x10
    path.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match=r"iter-000002\.safetensors fails its SHA-256.*--restart"):
        run_experiment(config, out, progress=False)


def test_nan_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    step = DCDistiller.step

    def step_that_diverges(self, iteration, *args):
        loss = step(self, iteration, *args)
        return loss * float("nan") if iteration == 3 else loss

    monkeypatch.setattr(DCDistiller, "step", step_that_diverges)
    config = build_config({"profile": "smoke"}, ["iterations=4", "attack=naive", "checkpoint.every=1"])
    out = tmp_path / "run"
    with pytest.raises(NumericalError) as err:
        run_experiment(config, out, progress=False)
    message = str(err.value)
    assert "loss became NaN at iteration 3" in message and "\n" not in message
    kept = list_checkpoints(out)
    assert [p.name for p in kept] == ["iter-000002.safetensors"] and str(kept[0]) in message
    assert not (out / "metrics.json").exists()


def test_diverging_images_stop_the_run(tmp_path):
    config = build_config({"profile": "smoke"}, ["iterations=3", "attack=naive", "dc.lr_img=1e38"])
    with pytest.raises(NumericalError, match="NaN|inf"):
        run_experiment(config, tmp_path / "run", progress=False)


STOP_IN_FINAL_EVALUATION = """
import os, signal, sys
from ddbackdoor import cli, experiment

evaluate = experiment.Experiment.evaluate

def stopped_evaluate(self, iteration, synthetic):
    os.kill(os.getpid(), signal.SIGTERM)  # as a sweep stopping its runs would
    return evaluate(self, iteration, synthetic)

experiment.Experiment.evaluate = stopped_evaluate
sys.exit(cli.main(["run", "profile=smoke", "iterations=2", "attack=naive", "--out", sys.argv[1], "--quiet"]))
"""


def test_sigterm_in_the_final_evaluation_exits_130_and_the_rerun_resumes(tmp_path):
    """Not killed by the signal (a sweep would record a failure): exit 130, as for any stop."""
    out = tmp_path / "run"
    command = [sys.executable, "-c", STOP_IN_FINAL_EVALUATION, str(out)]
    stopped = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert stopped.returncode == 130, stopped.stderr
    assert "Traceback" not in stopped.stderr
    assert not (out / "metrics.json").exists()
    config = build_config({"profile": "smoke"}, ["iterations=2", "attack=naive"])
    assert run_experiment(config, out, progress=False)["resumed_from"] == 2
