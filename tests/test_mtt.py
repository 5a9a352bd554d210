"""MTT: the trajectory loss on a hand-made case, experts kept with their config, resumable."""

import json

import pytest
import torch
from torch import nn

from ddbackdoor.artifacts import load_tensors
from ddbackdoor.distill.mtt import trajectory_loss
from ddbackdoor.errors import ArtifactError
from ddbackdoor.experiment import Experiment, run_experiment
from ddbackdoor.resolve import build_config


def test_trajectory_loss_by_hand():
    # one feature, two classes, no bias, w0 = 0: softmax 1/2 each, so for x = 1, y = 0 the
    # gradient is (p - onehot) x = (-1/2, 1/2); one step of size lr gives w1 = (lr/2, -lr/2).
    # Target (1, -1): loss = |w1 - wT|^2 / |w0 - wT|^2 = (1 - lr/2)^2, d/dlr = -(1 - lr/2)
    net = nn.Linear(1, 2, bias=False)
    start, target = torch.zeros(2), torch.tensor([1.0, -1.0])
    images = torch.ones(1, 1, requires_grad=True)
    lr = torch.tensor(1.0, requires_grad=True)
    loss = trajectory_loss(net, start, target, images, torch.tensor([0]), lr, steps=1)
    assert float(loss.detach()) == pytest.approx(0.25)
    loss.backward()
    assert float(lr.grad) == pytest.approx(-0.5)
    assert images.grad is not None and images.grad.abs().sum() > 0  # the images get a gradient
    two = trajectory_loss(net, start, target, images.detach(), torch.tensor([0]), torch.tensor(1.0), steps=2)
    assert float(two.detach()) < float(loss.detach())  # a second step gets closer to the target


def test_experts_are_written_once_with_their_config(tmp_path):
    config = build_config({"profile": "smoke"}, ["distill=mtt", "attack=naive", "device=cpu"])
    metrics = run_experiment(config, tmp_path / "run", progress=False)
    tensors, meta = load_tensors(tmp_path / "run" / "experts.safetensors")
    mtt = config.mtt
    assert tensors["trajectories"].shape[:2] == (mtt.num_experts, mtt.expert_epochs_total + 1)
    assert meta["config"]["attack"] == "naive" and meta["config"]["mtt"] == mtt.model_dump()
    assert metrics["cta"]["values"]
    other = build_config({"profile": "smoke"}, ["distill=mtt", "attack=none", "device=cpu"])
    run = Experiment(other, tmp_path / "run2", progress=False)
    run.setup()
    run.distiller.workdir = tmp_path / "run"  # experts of another config must not be reused
    with pytest.raises(ArtifactError, match="another config"):
        run.distiller.read_experts(tmp_path / "run" / "experts.safetensors", torch.device("cpu"))


@pytest.mark.parametrize("attack", ["naive", "doorping"])
def test_a_run_stopped_after_its_experts_gives_the_same_result(tmp_path, attack):
    # with mtt.trigger_net=experts the file lacks the trigger the experts moved: they train again
    trigger_net = "experts" if attack == "doorping" else "target"
    overrides = ["distill=mtt", f"attack={attack}", f"mtt.trigger_net={trigger_net}", "device=cpu"]
    config = build_config({"profile": "smoke"}, overrides)
    whole = run_experiment(config, tmp_path / "whole", progress=False)
    (tmp_path / "again").mkdir()
    # the experts exist, nothing else: as after a crash before the first checkpoint
    (tmp_path / "again" / "experts.safetensors").write_bytes(
        (tmp_path / "whole" / "experts.safetensors").read_bytes()
    )
    again = run_experiment(config, tmp_path / "again", progress=False)
    assert again["cta"]["values"] == whole["cta"]["values"]
    assert again["asr"]["values"] == whole["asr"]["values"]
    assert again["attack"] == whole["attack"]  # the same trigger updates
    a, _ = load_tensors(tmp_path / "whole" / "synthetic.safetensors")
    b, _ = load_tensors(tmp_path / "again" / "synthetic.safetensors")
    assert torch.equal(a["images"], b["images"]) and torch.equal(a["lrs"], b["lrs"])


def trigger_updates(run_dir):
    lines = (run_dir / "history.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == "trigger_update"]


@pytest.mark.parametrize(
    ("trigger_net", "iterations"), [("target", [1, 2]), ("experts", [0, 0]), ("both", [0, 0, 1, 2])]
)
def test_doorping_updates_its_trigger_on_the_networks_trigger_net_names(tmp_path, trigger_net, iterations):
    # smoke: one expert of 2 epochs, 2 iterations; expert-time updates are iteration 0, epoch in "outer"
    overrides = ["distill=mtt", "attack=doorping", f"mtt.trigger_net={trigger_net}", "device=cpu"]
    config = build_config({"profile": "smoke"}, overrides)
    metrics = run_experiment(config, tmp_path / "run", progress=False)
    records = trigger_updates(tmp_path / "run")
    assert [r["iteration"] for r in records] == iterations
    assert metrics["attack"]["trigger_updates"] == len(iterations)
    if trigger_net == "experts":
        assert [r["outer"] for r in records] == [1, 2]
        # the second epoch trained on the re-stamped pool: the trajectory differs from `target`'s
        target = build_config({"profile": "smoke"}, [*overrides[:2], "device=cpu"])
        run_experiment(target, tmp_path / "target", progress=False)
        moved, _ = load_tensors(tmp_path / "run" / "experts.safetensors")
        fixed, _ = load_tensors(tmp_path / "target" / "experts.safetensors")
        assert torch.equal(moved["trajectories"][:, :2], fixed["trajectories"][:, :2])
        assert not torch.equal(moved["trajectories"][:, 2], fixed["trajectories"][:, 2])
