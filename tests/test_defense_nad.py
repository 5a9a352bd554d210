"""NAD: attention maps by hand, the layers it reads, and the BadNets sanity target."""

import math

import pytest
import torch
from torch import nn

from ddbackdoor.defenses import nad
from ddbackdoor.models import create_model

pytestmark = pytest.mark.usefixtures("host_independent")  # conftest: one thread, host-independent


def test_attention_map_is_normalised_sum_of_squares():
    features = torch.tensor([[[[1.0, 0.0]], [[1.0, -2.0]]]])  # [1, 2 channels, 1, 2]
    # sum_c |F|^2 = [2, 4]; L2 norm sqrt(20)
    expected = torch.tensor([2.0, 4.0]) / math.sqrt(20)
    assert torch.allclose(nad.attention_map(features).flatten(), expected, atol=1e-6)
    assert float(nad.attention_loss(features, 3 * features)) == pytest.approx(0.0, abs=1e-10)
    assert float(nad.attention_loss(features, features.flip(-1))) > 0


def test_reads_the_activation_after_each_of_the_last_convs():
    net = create_model("convnet", 1, 10, 28, width=4)
    chosen = nad.conv_outputs(net, 3)
    assert chosen == [net.features[2], net.features[6], net.features[10]]
    assert all(isinstance(m, nn.ReLU) for m in chosen)


@pytest.mark.xfail(
    strict=True,
    raises=AssertionError,
    reason="measured (3% BadNets, host-independent kernels): ASR 0.969 -> 0.007 but CTA 0.857 -> 0.601 "
    "(25.6 points lost; the teacher alone: ASR 0.297, CTA 0.789) with the paper's schedule (lr 0.1 / 10 "
    "every 2 epochs, teacher 10 and student 20 epochs, betas 500/1000/1000) on 300 clean images: the "
    "backdoor goes, but the 10-point CTA budget is missed",
)
def test_badnets_asr_falls_below_0_2_within_10_points_of_cta(badnets):
    model, data = badnets
    result = nad.run(model, data, nad.NADOptions(), torch.Generator().manual_seed(0))
    print(f"\nnad: before {result['before']}; teacher {result['teacher']}; after {result['after']}")
    assert result["after"]["asr"] < 0.2
    assert result["before"]["cta"] - result["after"]["cta"] <= 0.10
