import pytest
import torch
from helpers import pool_of, tiny_config, tiny_data

from ddbackdoor.distill import DCDistiller
from ddbackdoor.distill.dc import freeze_batchnorm_on_real
from ddbackdoor.distill.pool import init_synthetic
from ddbackdoor.models import create_model


def make_dc(*overrides: str) -> DCDistiller:
    cfg = tiny_config("ipc=3", "dc.batch_real=8", *overrides)
    return DCDistiller(cfg, lambda: create_model("convnet", 1, 4, 16, width=8, depth=2), progress=False)


@pytest.mark.parametrize("norm", ["instancenorm", "batchnorm"])
def test_batched_matching_equals_the_per_class_loop(norm):
    data = tiny_data()
    pool = pool_of(data)
    dc = make_dc()
    torch.manual_seed(0)
    net = create_model("convnet", 1, 4, 16, width=8, depth=2, norm=norm)
    if norm == "batchnorm":
        freeze_batchnorm_on_real(net, pool, 4, torch.Generator().manual_seed(5))
    syn = torch.randn(12, 1, 16, 16, requires_grad=True)

    loop_loss = sum(
        dc.class_matching_loss(net, pool, syn, c, torch.Generator().manual_seed(1)) for c in range(4)
    )
    # the loop above re-seeds per class; draw the same batches for the batched path
    gen = torch.Generator().manual_seed(1)
    batches = [pool.sample(c, 8, torch.Generator().manual_seed(1)) for c in range(4)]
    sample = pool.sample
    pool.sample = lambda c, n, g: batches[c]
    try:
        batched_loss = dc.matching_loss_batched(net, pool, syn, gen)
    finally:
        pool.sample = sample
    (g_loop,) = torch.autograd.grad(loop_loss, syn)
    (g_batched,) = torch.autograd.grad(batched_loss, syn)
    assert torch.allclose(batched_loss, loop_loss, rtol=1e-4)
    assert float((g_batched - g_loop).norm() / g_loop.norm()) < 1e-4


def test_freeze_batchnorm_sets_statistics_and_eval_mode():
    torch.manual_seed(0)
    net = create_model("convnet", 1, 4, 16, width=8, depth=2, norm="batchnorm")
    freeze_batchnorm_on_real(net, pool_of(tiny_data()), 4, torch.Generator().manual_seed(0))
    bns = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and all(not m.training for m in bns)
    assert not torch.allclose(bns[0].running_mean, torch.zeros_like(bns[0].running_mean))


def test_init_synthetic_is_class_major():
    pool = pool_of(tiny_data())
    images, labels = init_synthetic(pool, 3, "real", torch.Generator().manual_seed(0))
    assert labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    for image, label in zip(images, labels, strict=True):
        matches = (pool.images[pool.by_class[int(label)]] == image).all(dim=(1, 2, 3))
        assert matches.any()
    noise, _ = init_synthetic(pool, 3, "noise", torch.Generator().manual_seed(0))
    assert noise.shape == (12, 1, 16, 16) and abs(float(noise.mean())) < 0.2


class Recorder:
    def __init__(self):
        self.networks, self.iterations = [], []

    def on_network(self, net, ctx):
        self.networks.append((ctx.iteration, ctx.outer_step, ctx.is_last_outer))

    def on_iteration(self, iteration, synthetic):
        self.iterations.append((iteration, synthetic.images.shape))


@pytest.mark.parametrize("matching", ["loop", "batched"])
def test_run_calls_hooks_and_moves_the_images(matching):
    torch.manual_seed(0)
    pool = pool_of(tiny_data())
    dc = make_dc("iterations=2", "dc.outer_loop=3", "dc.inner_loop=1", f"dc.matching={matching}")
    gen = torch.Generator().manual_seed(0)
    start, _ = init_synthetic(pool, 3, "noise", torch.Generator().manual_seed(0))
    recorder = Recorder()
    result = dc.run(pool, [recorder], gen)
    assert recorder.networks == [(i, o, o == 2) for i in (1, 2) for o in range(3)]
    assert [i for i, _ in recorder.iterations] == [1, 2]
    assert result.images.shape == start.shape and not torch.allclose(result.images, start)
    assert len(result.metadata["loss_history"]) == 2
