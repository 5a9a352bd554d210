"""tools/gpu_evidence.sh end to end on this CPU at smoke scale: stopped by its deadline, resumed."""

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
RUN_ID = "smoke-fashion-mnist-dc-seed0"


def loan(workdir: Path, out: Path) -> dict:
    env = {
        **os.environ,
        "OUT": str(out),
        "DEVICE": "cpu",
        "SCALE": "smoke",
        "EXTRA": "iterations=1000 eval.num_victims=1",
        "BUDGET": "40",
        "GRACE": "15",
        "BENCH": "",
        "PYTHON": sys.executable,
        "GIT_REV": "test",
    }
    done = subprocess.run(
        ["bash", str(SCRIPT)], cwd=workdir, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stdout + done.stderr
    with tarfile.open(out / f"evidence-{RUN_ID}.tar.gz") as tar:
        tar.extractall(workdir / "docs" / "evidence", filter="data")
    lines = (workdir / "docs" / "evidence" / RUN_ID / "segments.jsonl").read_text().splitlines()
    return json.loads(lines[-1])


@pytest.mark.skipif(sys.platform != "linux", reason="bash, timeout and signals as on the GPU machine")
def test_two_loans_stop_on_time_and_continue(tmp_path):
    (tmp_path / "src").symlink_to(ROOT / "src")
    first = loan(tmp_path, tmp_path / "out1")
    assert first["segment"] == 1 and first["from_iteration"] == 0
    assert first["exit_status"] == 130  # stopped by SIGTERM after a checkpoint, not killed
    assert 0 < first["to_iteration"] < 1000
    assert set(first["runs"]) == {
        "attack-none",
        "attack-naive",
        "attack-doorping",
        "attack-doorping_poison.clip-false",
    }
    assert {r["iteration"] for r in first["runs"].values()} == {first["to_iteration"]}
    second = loan(tmp_path, tmp_path / "out2")
    assert second["segment"] == 2 and second["from_iteration"] == first["to_iteration"]
    assert second["to_iteration"] > first["to_iteration"]
    log = (tmp_path / "docs" / "evidence" / RUN_ID / "attack-doorping" / "run.log").read_text()
    assert f"from iteration {first['to_iteration']}" in log
