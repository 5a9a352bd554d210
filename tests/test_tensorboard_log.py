"""log.tensorboard=true writes the run's loss and scores as TensorBoard scalars."""

import json
import struct

import pytest

from ddbackdoor.experiment import run_experiment
from ddbackdoor.resolve import build_config


def read_scalars(directory):
    event_pb2 = pytest.importorskip("tensorboardX.proto.event_pb2")
    scalars = {}
    for path in directory.glob("events.out.tfevents.*"):
        data = path.read_bytes()
        offset = 0
        while offset < len(data):  # TFRecord: u64 length, u32 crc, payload, u32 crc
            (length,) = struct.unpack("<Q", data[offset : offset + 8])
            event = event_pb2.Event.FromString(data[offset + 12 : offset + 12 + length])
            offset += 12 + length + 4
            for value in event.summary.value:
                scalars.setdefault(value.tag, {})[event.step] = value.simple_value
    return scalars


def test_loss_per_iteration_and_scores_per_evaluation(tmp_path):
    pytest.importorskip("tensorboardX")
    overrides = ["attack=naive", "iterations=3", "eval.every=2", "log.tensorboard=true", "device=cpu"]
    metrics = run_experiment(build_config({"profile": "smoke"}, overrides), tmp_path / "run", progress=False)
    scalars = read_scalars(tmp_path / "run" / "tensorboard")
    assert sorted(scalars["distill/loss"]) == [1, 2, 3]
    history = json.loads((tmp_path / "run" / "metrics.json").read_text())["history"]
    assert [h["iteration"] for h in history] == [2, 3]
    for record in history:
        for key in ("cta", "asr", "asr_all"):
            assert scalars[f"eval/{key}"][record["iteration"]] == pytest.approx(record[key]["mean"], abs=1e-6)
    assert metrics["cta"]["mean"] == pytest.approx(scalars["eval/cta"][3], abs=1e-6)


def test_off_by_default(tmp_path):
    run_experiment(
        build_config({"profile": "smoke"}, ["attack=none", "device=cpu"]), tmp_path / "r", progress=False
    )
    assert not (tmp_path / "r" / "tensorboard").exists()
