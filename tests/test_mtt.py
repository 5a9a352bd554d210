"""MTT: the trajectory loss on a hand-made case, experts kept with their config, resumable."""

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


def test_a_run_stopped_after_its_experts_gives_the_same_result(tmp_path):
    config = build_config({"profile": "smoke"}, ["distill=mtt", "attack=naive", "device=cpu"])
    whole = run_experiment(config, tmp_path / "whole", progress=False)
    (tmp_path / "again").mkdir()
    # the experts exist, nothing else: as after a crash before the first checkpoint
    (tmp_path / "again" / "experts.safetensors").write_bytes(
        (tmp_path / "whole" / "experts.safetensors").read_bytes()
    )
    again = run_experiment(config, tmp_path / "again", progress=False)
    assert again["cta"]["values"] == whole["cta"]["values"]
    a, _ = load_tensors(tmp_path / "whole" / "synthetic.safetensors")
    b, _ = load_tensors(tmp_path / "again" / "synthetic.safetensors")
    assert torch.equal(a["images"], b["images"]) and torch.equal(a["lrs"], b["lrs"])
