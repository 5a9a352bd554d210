"""`seeded.split`: the target class's seeds learn from its poisoned images only, its other
synthetic images from its clean images only (RealPool.sample_groups)."""

import pytest
import torch
import yaml
from helpers import prepared_seeded, tiny_config

from ddbackdoor.distill import DISTILLERS
from ddbackdoor.distill.dm import distribution_loss
from ddbackdoor.errors import ConfigError
from ddbackdoor.models import create_model
from ddbackdoor.stacked import check_stackable

# with the smoke profile's ipc 2: one seed and one other image in the target class
SPLIT = ("seeded.share=0.25", "seeded.split=true")


def rows_in(batch: torch.Tensor, images: torch.Tensor) -> int:
    return int(sum(bool((images == image).all(dim=(1, 2, 3)).any()) for image in batch))


def test_a_split_class_draws_as_before_and_pairs_each_share_with_its_own_images():
    _, pool, attack = prepared_seeded(*SPLIT)
    stamped = pool.images[attack.poison_index]
    (poisoned, first), (clean, rest) = pool.sample_groups(0, 20, torch.Generator().manual_seed(3))
    assert (first, rest) == (slice(0, 1), slice(1, None))
    assert len(poisoned) == 5 and rows_in(poisoned, stamped) == 5  # the share, all poisoned
    assert len(clean) == 15 and rows_in(clean, stamped) == 0
    same = pool.sample(0, 20, torch.Generator().manual_seed(3))
    assert torch.equal(torch.cat([clean, poisoned]), same)  # the draws `sample` makes
    ((whole, rows),) = pool.sample_groups(1, 20, torch.Generator().manual_seed(3))
    assert rows == slice(None) and torch.equal(whole, pool.sample(1, 20, torch.Generator().manual_seed(3)))


def dc_gradient(config, pool) -> torch.Tensor:
    distiller = DISTILLERS[config.distill](config, lambda: None, progress=False)
    torch.manual_seed(0)
    net = create_model("convnet", 1, 4, 16, width=8, depth=2)
    syn = torch.randn(8, 1, 16, 16, generator=torch.Generator().manual_seed(1), requires_grad=True)
    loss = distiller.class_matching_loss(net, pool, syn, 0, torch.Generator().manual_seed(2))
    return torch.autograd.grad(loss, syn)[0][:2]


def dm_gradient(config, pool) -> torch.Tensor:
    torch.manual_seed(0)
    net = create_model("convnet", 1, 4, 16, width=8, depth=2)
    distiller = DISTILLERS["dm"](config, lambda: net, progress=False)
    distiller.start(pool, torch.Generator().manual_seed(1))
    reals, syns = distiller.class_batches(pool, torch.Generator().manual_seed(2))
    return torch.autograd.grad(distribution_loss(net, reals, syns), distiller.images)[0][:2]


@pytest.mark.parametrize(
    ("distill", "gradient"), [("dc", dc_gradient), ("dsa", dc_gradient), ("dm", dm_gradient)]
)
def test_with_split_the_seed_learns_nothing_from_the_clean_target_images(distill, gradient):
    """Change the clean images of the target class: with split, the seed's gradient stays and the
    other image's moves; without, the seed's moves too."""
    for split in (True, False):
        _, pool, attack = prepared_seeded(*SPLIT[:-1], f"seeded.split={split}", f"distill={distill}")
        config = attack.config
        before = gradient(config, pool)
        clean = attack.clean_target_rows()
        pool.images[clean] = pool.images[clean] + torch.randn(pool.images[clean].shape)
        after = gradient(config, pool)
        seed_moved = not torch.allclose(before[0], after[0], rtol=1e-5, atol=1e-7)
        assert seed_moved is not split, (distill, split)
        assert not torch.allclose(before[1], after[1], rtol=1e-3, atol=1e-5)  # the other image learns


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("distill=kip", "no effect with distill=kip: only the matching distillers .dc, dm, dsa."),
        ("seeded.share=0", r"needs 0 < seeded.share < 1 \(got 0.0\)"),
        ("seeded.share=1", r"needs 0 < seeded.share < 1 \(got 1.0\)"),
        ("seeded.images=0", r"needs 0 < seeded.images < ipc=2 \(got 0\)"),
        ("seeded.images=2", r"needs 0 < seeded.images < ipc=2 \(got 2\)"),
    ],
)
def test_split_refuses_what_it_cannot_split(override, message):
    with pytest.raises(ConfigError, match=message):
        tiny_config("attack=seeded", *SPLIT, override)


def test_split_runs_are_not_stacked():
    with pytest.raises(ConfigError, match="seeded.split runs cannot be stacked"):
        check_stackable(
            [tiny_config("attack=seeded", *SPLIT), tiny_config("attack=seeded", *SPLIT, "seed=1")]
        )


@pytest.mark.parametrize("distill", ["dc", "dsa", "dm"])
def test_a_split_run_runs_and_records_it(tmp_path, distill):
    from ddbackdoor.experiment import run_experiment
    from ddbackdoor.resolve import build_config

    overrides = [f"distill={distill}", "attack=seeded", "seeded.split=true", "threads=1"]
    metrics = run_experiment(build_config({"profile": "smoke"}, overrides), tmp_path / "run", progress=False)
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["seeded"]["split"] is True
    assert metrics["attack"]["seeded"] == 1 and len(metrics["asr"]["values"]) == 2
