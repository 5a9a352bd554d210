import pytest
import torch
from helpers import pool_of, tiny_config, tiny_data
from torch import nn

from ddbackdoor.distill import DISTILLERS, DMDistiller
from ddbackdoor.distill.dm import distribution_loss, embed
from ddbackdoor.errors import ConfigError
from ddbackdoor.models import create_model


def make_dm(make_net=None, *overrides: str) -> DMDistiller:
    cfg = tiny_config("distill=dm", "ipc=3", "dm.batch_real=8", *overrides)
    make_net = make_net or (lambda: create_model("convnet", 1, 4, 16, width=8, depth=2))
    return DMDistiller(cfg, make_net, progress=False)


@pytest.fixture(scope="module")
def pool():
    return pool_of(tiny_data())


def linear_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(256, 5), nn.Linear(5, 4))


def test_registered_with_the_authors_defaults():
    cfg = tiny_config("distill=dm", "profile=paper")
    assert DISTILLERS["dm"] is DMDistiller
    assert (cfg.iterations, cfg.dm.init, cfg.dm.lr_img, cfg.dm.batch_real) == (20000, "real", 1.0, 256)
    assert cfg.eval.epochs == 1000


def test_embedding_is_the_input_of_the_last_linear_layer():
    net = create_model("convnet", 1, 4, 16, width=8, depth=2, hidden=6)
    x = torch.randn(3, 1, 16, 16)
    hidden = net.classifier[:3](net.features(x))  # Flatten, Linear, ReLU
    assert torch.equal(embed(net, x), hidden)
    with pytest.raises(ConfigError, match="Linear classifier"):
        embed(nn.Sequential(nn.Conv2d(1, 2, 3)), x)


def test_step_loss_and_update_match_the_hand_computed_mean_distance(pool):
    net = linear_net()
    # no augmentation, and real batches that hold the whole class: the real means are fixed
    dm = make_dm(lambda: net, "dsa.strategy=none", "dm.batch_real=100")
    dm.start(pool, torch.Generator().manual_seed(0))
    before = dm.images.detach().clone()
    weight, bias = net[1].weight.detach(), net[1].bias.detach()
    real_means = torch.stack([pool.images[idx].flatten(1).mean(0) @ weight.T + bias for idx in pool.by_class])
    syn_means = (before.flatten(1) @ weight.T + bias).view(4, 3, 5).mean(1)
    expected = ((real_means - syn_means) ** 2).sum()

    loss = dm.step(1, pool, [], torch.Generator().manual_seed(1))
    assert torch.allclose(loss, expected / 4, rtol=1e-5)
    # d/dx_i of ||m_r - m_s||^2 = (2 / ipc) W^T (m_s - m_r); SGD's first step is x -= lr * grad
    grad = (2 / 3) * ((syn_means - real_means) @ weight).repeat_interleave(3, dim=0)
    assert torch.allclose(dm.images.detach(), before - 1.0 * grad.view_as(before), atol=1e-5)


def test_distribution_loss_sends_gradients_to_the_synthetic_images_only():
    net = linear_net().requires_grad_(False)
    reals = [torch.randn(6, 1, 16, 16, requires_grad=True) for _ in range(2)]
    syns = [torch.randn(2, 1, 16, 16, requires_grad=True) for _ in range(2)]
    distribution_loss(net, reals, syns).backward()
    assert all(r.grad is None for r in reals)
    assert all(float(s.grad.abs().sum()) > 0 for s in syns)


class Recorder:
    def __init__(self):
        self.calls = []

    def on_network(self, net, ctx):
        self.calls.append((ctx.iteration, net))


class Factory:
    """make_net that remembers each network and its initial weights."""

    def __init__(self):
        self.nets, self.initial = [], []

    def __call__(self) -> nn.Module:
        net = create_model("convnet", 1, 4, 16, width=8, depth=2)
        self.nets.append(net)
        self.initial.append({k: v.clone() for k, v in net.state_dict().items()})
        return net


def test_random_trigger_net_is_the_iterations_own_network(pool):
    factory, recorder = Factory(), Recorder()
    dm = make_dm(factory, "iterations=4", "dm.trigger_net=random", "dm.trigger_every=2")
    dm.run(pool, [recorder], torch.Generator().manual_seed(0))
    assert [i for i, _ in recorder.calls] == [2, 4]
    assert [net for _, net in recorder.calls] == [factory.nets[1], factory.nets[3]]


def test_trained_trigger_net_is_a_fresh_network_trained_on_the_synthetic_set(pool):
    factory, recorder = Factory(), Recorder()
    dm = make_dm(
        factory, "iterations=2", "dm.trigger_net=trained", "dm.trigger_every=2", "dm.trigger_epochs=2"
    )
    dm.run(pool, [recorder], torch.Generator().manual_seed(0))
    assert len(factory.nets) == 3 and [i for i, _ in recorder.calls] == [2]
    surrogate = recorder.calls[0][1]
    assert surrogate is factory.nets[2]  # made after iteration 2's matching network
    moved = [not torch.equal(v, factory.initial[2][k]) for k, v in surrogate.state_dict().items()]
    assert all(moved)


def test_batchnorm_networks_match_in_train_mode(pool):
    make = lambda: create_model("convnet", 1, 4, 16, width=8, depth=2, norm="batchnorm")  # noqa: E731
    dm = make_dm(make)
    dm.start(pool, torch.Generator().manual_seed(0))
    before = dm.images.detach().clone()
    loss = dm.step(1, pool, [], torch.Generator().manual_seed(0))
    assert torch.isfinite(loss) and not torch.equal(before, dm.images.detach())


def test_resume_from_state_is_bitwise_identical(pool):
    def fresh() -> DMDistiller:
        return make_dm(None, "dm.trigger_every=1")

    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    straight = fresh()
    straight.start(pool, gen)
    straight.step(1, pool, [], gen)
    tensors = {k: v.clone() for k, v in straight.state_tensors().items()}
    gen_state, torch_state = gen.get_state(), torch.get_rng_state()
    straight.step(2, pool, [], gen)

    resumed = fresh()
    gen.set_state(gen_state)
    torch.set_rng_state(torch_state)
    resumed.load_state_tensors(tensors, torch.device("cpu"))
    resumed.step(2, pool, [], gen)
    assert torch.equal(resumed.images, straight.images)
    assert torch.equal(
        resumed.optimizer_img.state[resumed.images]["momentum_buffer"],
        straight.optimizer_img.state[straight.images]["momentum_buffer"],
    )
