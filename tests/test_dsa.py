import pytest
import torch
from helpers import pool_of, tiny_config, tiny_data

from ddbackdoor.distill import DISTILLERS, DSADistiller
from ddbackdoor.distill.pool import init_synthetic
from ddbackdoor.errors import ConfigError
from ddbackdoor.models import create_model


def make_dsa(*overrides: str) -> DSADistiller:
    cfg = tiny_config("distill=dsa", "ipc=3", "dc.batch_real=8", *overrides)
    return DSADistiller(cfg, lambda: create_model("convnet", 1, 4, 16, width=8, depth=2), progress=False)


def test_registered_and_profiles_start_from_real_images():
    assert DISTILLERS["dsa"] is DSADistiller
    assert tiny_config("distill=dsa").dc.init == "real"
    assert tiny_config("distill=dc").dc.init == "noise"


def test_augment_pair_gives_both_batches_the_same_transform():
    dsa = make_dsa()
    real = torch.rand(8, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    syn = real[:3].clone()
    gen = torch.Generator().manual_seed(0)
    changed = 0
    for _ in range(12):  # several draws, so several kinds of transform
        out_real, out_syn = dsa.augment_pair(real, syn, gen)
        assert torch.equal(out_real[:3], out_syn)
        changed += not torch.equal(out_real, real)
    assert changed >= 10  # a draw that leaves images unchanged (no flip) is possible, but rare


def test_batched_matching_is_refused():
    with pytest.raises(ConfigError, match="dc.matching=batched"):
        make_dsa("dc.matching=batched")


class Recorder:
    def __init__(self):
        self.networks, self.iterations = [], []

    def on_network(self, net, ctx):
        self.networks.append((ctx.iteration, ctx.outer_step, ctx.is_last_outer))

    def on_iteration(self, iteration, synthetic):
        self.iterations.append(iteration)


def test_run_moves_the_images_and_calls_hooks():
    torch.manual_seed(0)
    pool = pool_of(tiny_data())
    dsa = make_dsa("iterations=2", "dc.outer_loop=2", "dc.inner_loop=1")
    start, _ = init_synthetic(pool, 3, "real", torch.Generator().manual_seed(0))
    recorder = Recorder()
    result = dsa.run(pool, [recorder], torch.Generator().manual_seed(0))
    assert recorder.networks == [(i, o, o == 1) for i in (1, 2) for o in range(2)]
    assert recorder.iterations == [1, 2]
    assert result.images.shape == start.shape and not torch.allclose(result.images, start)
    assert len(result.metadata["loss_history"]) == 2


def test_victims_and_the_inner_loop_train_on_augmented_batches():
    dsa = make_dsa("dc.inner_loop=1")
    pool = pool_of(tiny_data())
    dsa.start(pool, torch.Generator().manual_seed(0))
    seen, augment = [], dsa.augment

    def spy(x, generator):
        seen.append(x.shape[0])
        return augment(x, generator)

    dsa.augment = spy
    net = create_model("convnet", 1, 4, 16, width=8, depth=2)
    dsa.train_network(net, torch.optim.SGD(net.parameters(), lr=0.01), torch.Generator())
    assert seen == [12]  # one epoch, one batch of all 12 synthetic images
    cfg = dsa.config.eval.model_copy(update={"epochs": 2})
    dsa.victim_trainer()(net, dsa.synthetic(), cfg, torch.Generator())
    assert seen == [12, 12, 12]
