"""Fine-Pruning: the channel mask and the BadNets sanity target."""

import pytest
import torch
from torch import nn

from ddbackdoor.defenses import fine_pruning as fp

pytestmark = pytest.mark.usefixtures("host_independent")  # conftest: one thread, host-independent


def test_mask_zeroes_only_the_pruned_channels_of_the_last_conv():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 3, 1), nn.ReLU(), nn.Conv2d(3, 4, 1), nn.ReLU(), nn.Flatten())
    module = fp.last_conv_output(net)
    assert module is net[3]
    x = torch.rand(2, 1, 2, 2)
    plain = net(x).view(2, 4, 2, 2)
    mask = fp.ChannelMask(module, 4, torch.device("cpu"))
    mask.prune(torch.tensor([1, 3]))
    pruned = net(x).view(2, 4, 2, 2)
    assert torch.equal(pruned[:, [1, 3]], torch.zeros(2, 2, 2, 2))
    assert torch.equal(pruned[:, [0, 2]], plain[:, [0, 2]])
    mask.remove()
    assert torch.equal(net(x).view(2, 4, 2, 2), plain)


def test_channels_are_ranked_by_mean_activation():
    net = nn.Sequential(nn.Conv2d(1, 3, 1, bias=True), nn.ReLU())
    with torch.no_grad():
        net[0].weight.zero_()
        net[0].bias.copy_(torch.tensor([2.0, 0.5, 1.0]))
    activation = fp.mean_channel_activation(net, net[1], torch.zeros(5, 1, 2, 2))
    assert torch.argsort(activation).tolist() == [1, 2, 0]


@pytest.mark.xfail(
    strict=True,
    raises=AssertionError,
    reason="measured on this 16-channel ConvNet (3% BadNets, host-independent kernels): the 4-point "
    "clean-accuracy budget allows pruning 6 of 16 channels, which leaves ASR at 0.989; 20 epochs of "
    "fine-tuning at lr 0.01 on the 300 clean images then give ASR 0.907, CTA 0.857 -> 0.830: the backdoor "
    "does not sit in the dormant channels of so narrow a layer",
)
def test_badnets_asr_falls_below_0_2_within_10_points_of_cta(badnets):
    model, data = badnets
    result = fp.run(model, data, fp.FinePruningOptions(), torch.Generator().manual_seed(0))
    print(
        f"\nfine_pruning: pruned {result['pruned']}/{result['channels']}; before {result['before']}; "
        f"after pruning {result['after_pruning']}; after fine-tuning {result['after']}"
    )
    assert result["after"]["asr"] < 0.2
    assert result["before"]["cta"] - result["after"]["cta"] <= 0.10
