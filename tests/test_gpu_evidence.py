"""tools/gpu_evidence.sh end to end on this CPU at smoke scale: stopped by its deadline, resumed;
a finished stack skipped and the next one begun."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tools" / "gpu_evidence.sh"
RUN_ID = "smoke-fashion-mnist-dc-ipc1-seed0"
NEXT_ID = "smoke-fashion-mnist-dc-seed0"
STACKS = "ipc1-seed0 ipc10-seed0"


def loan(workdir: Path, out: Path, iterations: int = 1000, budget: int = 40) -> str:
    env = {
        **os.environ,
        "OUT": str(out),
        "DEVICE": "cpu",
        "SCALE": "smoke",
        "STACKS": STACKS,
        "EXTRA": f"iterations={iterations} eval.num_victims=1",
        "BUDGET": str(budget),
        "GRACE": "15",
        "BENCH": "",
        "PYTHON": sys.executable,
        "GIT_REV": "test",
    }
    done = subprocess.run(
        ["bash", str(SCRIPT)], cwd=workdir, env=env, capture_output=True, text=True, timeout=budget + 80
    )
    assert done.returncode == 0, done.stdout + done.stderr
    for packed in out.glob("evidence-*.tar.gz"):  # committed, as after a real loan
        with tarfile.open(packed) as tar:
            tar.extractall(workdir / "docs" / "evidence", filter="data")
    return done.stdout


def last_segment(workdir: Path, run_id: str = RUN_ID) -> dict:
    lines = (workdir / "docs" / "evidence" / run_id / "segments.jsonl").read_text().splitlines()
    return json.loads(lines[-1])


@pytest.mark.skipif(sys.platform != "linux", reason="bash, timeout and signals as on the GPU machine")
def test_two_loans_stop_on_time_and_continue(tmp_path):
    (tmp_path / "src").symlink_to(ROOT / "src")
    loan(tmp_path, tmp_path / "out1")
    first = last_segment(tmp_path)
    assert first["segment"] == 1 and first["from_iteration"] == 0
    assert first["exit_status"] == 130  # stopped by SIGTERM after a checkpoint, not killed
    assert 0 < first["to_iteration"] < 1000
    assert set(first["runs"]) == {
        "attack-none",
        "attack-naive",
        "attack-doorping",
        "attack-doorping_poison.clip-false",
        "attack-doorping_poison.clip-false_doorping.schedule-every_outer",
    }
    assert {r["iteration"] for r in first["runs"].values()} == {first["to_iteration"]}
    loan(tmp_path, tmp_path / "out2")
    second = last_segment(tmp_path)
    assert second["segment"] == 2 and second["from_iteration"] == first["to_iteration"]
    assert second["to_iteration"] > first["to_iteration"]
    log = (tmp_path / "docs" / "evidence" / RUN_ID / "attack-doorping" / "run.log").read_text()
    assert f"from iteration {first['to_iteration']}" in log


@pytest.mark.skipif(sys.platform != "linux", reason="bash, timeout and signals as on the GPU machine")
def test_a_finished_stack_is_skipped_and_the_next_one_runs(tmp_path):
    (tmp_path / "src").symlink_to(ROOT / "src")
    loan(tmp_path, tmp_path / "out1", iterations=2, budget=150)
    done = last_segment(tmp_path)
    assert done["exit_status"] == 0 and all(run["finished"] for run in done["runs"].values())
    assert done["runs"]["attack-none"]["metrics"]["asr"]["values"]  # per-victim values in the ledger
    assert last_segment(tmp_path, NEXT_ID)["runs"]  # the IPC-10 stack began in the same loan
    again = loan(tmp_path, tmp_path / "out2", iterations=2, budget=150)
    assert f"({RUN_ID}): finished earlier" in again
    assert len((tmp_path / "docs" / "evidence" / RUN_ID / "segments.jsonl").read_text().splitlines()) == 1
