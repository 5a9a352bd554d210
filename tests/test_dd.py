import pytest
import torch
import torch.nn.functional as F
from helpers import pool_of, tiny_config, tiny_data
from torch import nn
from torch.func import functional_call

from ddbackdoor.distill import DDDistiller
from ddbackdoor.distill.base import SyntheticSet
from ddbackdoor.distill.dd import StepLayout, replay, unroll
from ddbackdoor.errors import ConfigError, NumericalError
from ddbackdoor.models import create_model


@pytest.fixture(autouse=True)
def _one_thread():
    """These tensors are tiny: on a busy 2-core machine a second thread only adds spin-waiting
    (measured 35 s for this file with 2 threads, 7 s with 1); conftest restores the count."""
    torch.set_num_threads(1)


def make_net() -> nn.Module:
    return create_model("convnet", 1, 4, 16, width=8, depth=2, norm="none", hidden=16)


def make_dd(*overrides: str) -> DDDistiller:
    cfg = tiny_config("distill=dd", "ipc=4", "dd.batch_real=16", *overrides)
    return DDDistiller(cfg, make_net, progress=False)


@pytest.fixture(scope="module")
def distilled() -> tuple[DDDistiller, SyntheticSet]:
    """A fixed-init distillation, 3 iterations (shared by the protocol tests)."""
    torch.set_num_threads(1)  # set up before `_one_thread`; conftest restores the count
    torch.manual_seed(0)
    dd = make_dd("iterations=3", "dd.init=fixed")
    return dd, dd.run(pool_of(tiny_data()), [], torch.Generator().manual_seed(0))


def test_one_unrolled_step_of_a_linear_model_matches_the_hand_computation():
    gen = torch.Generator().manual_seed(0)
    net = nn.Linear(5, 3)
    w0 = {k: v.detach().clone().requires_grad_(True) for k, v in net.named_parameters()}
    images = torch.randn(6, 5, generator=gen, requires_grad=True)
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    lr = torch.tensor([0.3], requires_grad=True)
    end = unroll(net, w0, {}, [(images, labels)], lr)

    # cross-entropy of a linear model: dL/dlogits = (softmax - onehot) / n
    delta = (torch.softmax(images @ w0["weight"].T + w0["bias"], 1) - F.one_hot(labels, 3)) / 6
    grad_w, grad_b = delta.T @ images, delta.sum(0)
    assert torch.allclose(end["weight"], w0["weight"] - 0.3 * grad_w, atol=1e-6)
    assert torch.allclose(end["bias"], w0["bias"] - 0.3 * grad_b, atol=1e-6)

    real, real_labels = torch.randn(10, 5, generator=gen), torch.randint(0, 3, (10,), generator=gen)
    outer = F.cross_entropy(functional_call(net, end, (real,)), real_labels)
    outer.backward()
    # d outer / d lr = -<grad of the outer loss at w1, grad of the inner loss at w0>
    end_leaf = {k: v.detach().requires_grad_(True) for k, v in end.items()}
    outer_w, outer_b = torch.autograd.grad(
        F.cross_entropy(functional_call(net, end_leaf, (real,)), real_labels), list(end_leaf.values())
    )
    expected_lr_grad = -((outer_w * grad_w).sum() + (outer_b * grad_b).sum())
    assert torch.allclose(lr.grad, expected_lr_grad.detach().reshape(1), rtol=1e-4)
    assert float(lr.grad.abs()) > 0 and float(images.grad.abs().sum()) > 0


def test_data_steps_take_each_class_slice_in_order_and_epochs_cycle():
    layout = StepLayout(ipc=4, distill_steps=2, distill_epochs=3)
    images = torch.arange(12.0).view(12, 1, 1, 1)  # 3 classes x 4, class-major
    labels = torch.arange(3).repeat_interleave(4)
    batches = layout.batches(images, labels)
    assert layout.total == 6 and len(batches) == 2
    assert batches[0][0].flatten().tolist() == [0, 1, 4, 5, 8, 9]
    assert batches[1][0].flatten().tolist() == [2, 3, 6, 7, 10, 11]
    assert batches[0][1].tolist() == [0, 0, 1, 1, 2, 2] == batches[1][1].tolist()


def test_gradients_reach_images_and_lrs_through_a_convnet_unroll():
    torch.manual_seed(0)
    dd = make_dd()
    pool = pool_of(tiny_data())
    dd.start(pool, torch.Generator().manual_seed(0))
    net = make_net()
    weights = {k: v.detach().requires_grad_(True) for k, v in net.named_parameters()}
    end = unroll(net, weights, {}, dd.layout.batches(dd.images, dd.labels), dd.lrs())
    F.cross_entropy(functional_call(net, end, (pool.images[:16],)), pool.labels[:16]).backward()
    assert dd.raw_lrs.grad.shape == (dd.layout.total,) and bool((dd.raw_lrs.grad != 0).all())
    per_image = dd.images.grad.abs().flatten(1).sum(1)
    assert bool((per_image > 0).all())


def test_learned_lrs_start_at_lr_init_and_stay_positive_when_pushed_down():
    dd = make_dd("dd.lr_init=0.002", "dd.lr=1.0")
    dd.start(pool_of(tiny_data()), torch.Generator().manual_seed(0))
    assert torch.allclose(dd.lrs(), torch.full((dd.layout.total,), 0.002))
    for _ in range(30):  # Adam moves each raw value by about lr=1 per step, always downwards
        dd.optimizer.zero_grad()
        dd.raw_lrs.grad = torch.ones_like(dd.raw_lrs)
        dd.optimizer.step()
    lrs = dd.lrs().detach()
    assert float(dd.raw_lrs.detach().max()) < -30 and bool((lrs > 0).all()) and float(lrs.max()) < 1e-12


class EndWeightRecorder:
    """Keeps what a hook sees, and the synthetic steps the unroll used (not yet updated then)."""

    def __init__(self, dd: DDDistiller):
        self.dd, self.calls = dd, []

    def on_network(self, net, ctx):
        weights = {k: v.detach().clone() for k, v in net.named_parameters()}
        steps = (self.dd.images.detach().clone(), self.dd.lrs().detach().clone())
        self.calls.append((ctx.iteration, ctx.outer_step, ctx.is_last_outer, weights, steps))


def test_hooks_get_a_module_holding_the_unrolled_end_weights():
    torch.manual_seed(0)
    dd = make_dd("iterations=2", "dd.init=fixed")
    recorder = EndWeightRecorder(dd)
    dd.run(pool_of(tiny_data()), [recorder], torch.Generator().manual_seed(0))
    assert [c[:3] for c in recorder.calls] == [(1, 0, False), (2, 0, False)]
    net = make_net()
    for _, _, _, weights, (images, lrs) in recorder.calls:
        start = {k: dd.init[k].clone().requires_grad_(True) for k, _ in net.named_parameters()}
        end = unroll(net, start, {}, dd.layout.batches(images, dd.labels), lrs)
        assert all(torch.equal(weights[k], end[k].detach()) for k in end)
        assert not torch.equal(weights["classifier.3.weight"], dd.init["classifier.3.weight"])
    assert not torch.equal(
        recorder.calls[0][3]["features.0.weight"], recorder.calls[1][3]["features.0.weight"]
    )


def fresh(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return make_net()


def test_authors_protocol_replays_from_the_stored_init(distilled):
    dd, synthetic = distilled
    assert dd.config.dd.init == "fixed" and set(synthetic.extras) == {f"init.{k}" for k in dd.init}
    authors = make_dd("dd.victim_protocol=authors").victim_trainer()
    a = authors(fresh(1), synthetic, None, torch.Generator()).state_dict()
    b = authors(fresh(2), synthetic, None, torch.Generator()).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    net = make_net()
    net.load_state_dict(dd.init)
    expected = replay(net, synthetic, dd.layout).state_dict()
    assert all(torch.equal(a[k], expected[k]) for k in a)
    other = create_model("convnet", 1, 4, 16, width=4, depth=2, norm="none", hidden=16)
    with pytest.raises(ConfigError, match="victim_protocol=honest"):
        authors(other, synthetic, None, torch.Generator())


def test_honest_protocol_replays_the_steps_from_the_given_init(distilled):
    dd, synthetic = distilled
    honest = dd.victim_trainer()
    assert dd.config.dd.victim_protocol == "honest"
    start = fresh(1)
    weights = {k: v.detach().clone().requires_grad_(True) for k, v in start.named_parameters()}
    trained = honest(start, synthetic, None, torch.Generator()).state_dict()
    end = unroll(start, weights, {}, dd.layout.batches(synthetic.images, synthetic.labels), synthetic.lrs)
    assert all(torch.allclose(trained[k], end[k], atol=1e-6) for k in end)
    other = honest(fresh(2), synthetic, None, torch.Generator()).state_dict()
    assert not torch.equal(trained["features.0.weight"], other["features.0.weight"])
    assert not torch.equal(trained["features.0.weight"], dd.init["features.0.weight"])


def test_resume_after_one_iteration_is_bitwise_identical():
    pool = pool_of(tiny_data())
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    first = make_dd()  # random init: every iteration draws a network from the global RNG
    first.start(pool, gen)
    first.step(1, pool, [], gen)
    saved = {k: v.clone() for k, v in first.state_tensors().items()}
    gen_state, rng_state = gen.get_state(), torch.get_rng_state()
    first.step(2, pool, [], gen)
    torch.manual_seed(123)
    gen.manual_seed(123)

    second = make_dd()
    second.load_state_tensors(saved, torch.device("cpu"))
    gen.set_state(gen_state)
    torch.set_rng_state(rng_state)
    second.step(2, pool, [], gen)
    a, b = first.state_tensors(), second.state_tensors()
    assert a.keys() == b.keys() and any(k.startswith("optimizer.") for k in a)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_adam_lr_halves_every_40_epochs_of_the_real_data():
    dd = make_dd("dd.batch_real=1024")
    assert dd.adam_lr(240, 6000) == 0.01  # 6 batches per epoch: iteration 240 ends epoch 39
    assert dd.adam_lr(241, 6000) == 0.005
    assert dd.adam_lr(481, 6000) == 0.0025


def test_ipc_must_split_into_the_data_steps():
    with pytest.raises(ConfigError, match="multiple"):
        make_dd("ipc=3", "dd.distill_steps=2")


def test_a_diverging_unroll_stops_with_a_numerical_error():
    torch.manual_seed(0)
    dd = make_dd("dd.lr_init=1e30")
    pool = pool_of(tiny_data())
    gen = torch.Generator().manual_seed(0)
    dd.start(pool, gen)
    with pytest.raises(NumericalError, match="diverged"):
        dd.step(1, pool, [], gen)
