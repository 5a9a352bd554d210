"""The demo's worker pool: workers do not outlive the demo process."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest


def children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True, check=False)
    return [int(p) for p in out.stdout.split()]


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux-only")
def test_workers_checkpoint_and_exit_when_the_demo_process_is_killed(tmp_path):
    demo = subprocess.Popen(
        [sys.executable, "-m", "ddbackdoor", "demo", "profile=smoke", "iterations=100000", "--quiet"]
        + ["--out", str(tmp_path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        while not list(tmp_path.glob("*/checkpoints/*.safetensors")):  # the workers are distilling
            assert time.monotonic() < deadline and demo.poll() is None, "the demo did not start"
            time.sleep(0.5)
        workers = [
            p for p in children(demo.pid) if "multiprocessing-fork" in Path(f"/proc/{p}/cmdline").read_text()
        ]
        assert len(workers) == 2
        os.kill(demo.pid, signal.SIGKILL)
        demo.wait()
        deadline = time.monotonic() + 60
        while any(alive(p) for p in workers):
            assert time.monotonic() < deadline, "workers outlived the demo process"
            time.sleep(0.5)
    finally:
        if demo.poll() is None:
            demo.kill()


def test_demo_runs_on_the_cpu_whatever_the_machine_has(tmp_path):
    """The published table is a CPU table: the demo pins device=cpu (an override still wins), so a
    visible GPU does not change its numbers."""
    import yaml

    from ddbackdoor.demo import DEMO_RUNS, run_demo

    summary = run_demo(tmp_path, ["profile=smoke"], progress=False, jobs=1)
    assert set(summary) == set(DEMO_RUNS)
    for name in DEMO_RUNS:
        config = yaml.safe_load((tmp_path / name / "config.yaml").read_text())
        assert config["device"] == "cpu" and config["provenance"]["device"] == "cpu"
