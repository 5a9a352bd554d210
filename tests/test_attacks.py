import math

import pytest
import torch
import torch.nn.functional as F
from helpers import pool_of, prepared_seeded, tiny_config, tiny_data
from torch import nn

from ddbackdoor.attacks import ATTACKS, DoorpingAttack, NaiveAttack, NoAttack
from ddbackdoor.attacks.base import choose_poison
from ddbackdoor.attacks.seeded import round_robin
from ddbackdoor.distill.base import HookContext
from ddbackdoor.distill.pool import init_synthetic
from ddbackdoor.errors import ConfigError, DataError


def test_choose_poison_takes_floor_of_portion_without_repeats():
    index = choose_poison(1234, 0.01, torch.Generator().manual_seed(0))
    assert index.numel() == math.floor(12.34) == 12
    assert index.unique().numel() == 12


def test_naive_stamps_white_patch_relabels_and_leaves_the_rest():
    data = tiny_data(n_per_class=50)
    pool = pool_of(data)
    before = pool.images.clone()
    attack = NaiveAttack(
        tiny_config("poison.portion=0.05", "poison.target=2"), data, torch.Generator().manual_seed(0)
    )
    attack.prepare(pool)
    index = attack.poison_index
    assert index.numel() == 10
    assert (pool.labels[index] == 2).all()
    others = torch.ones(len(pool.labels), dtype=torch.bool)
    others[index] = False
    assert torch.equal(pool.labels[others], data.labels[others])
    assert torch.equal(pool.images[others], before[others])
    white = (1 - 0.3) / 0.4
    assert torch.allclose(pool.images[index][:, :, 13:15, 13:15], torch.full((10, 1, 2, 2), white))
    changed = (pool.images[index] != before[index]).any(dim=(0, 1))
    changed[13:15, 13:15] = False
    assert not changed.any()
    assert set(pool.by_class[2].tolist()) >= set(index.tolist())


def test_naive_with_checkerboard_pattern_stamps_the_board():
    data = tiny_data(n_per_class=50)
    pool = pool_of(data)
    config = tiny_config("attack=naive", "poison.portion=0.05", "poison.pattern=checkerboard")
    attack = NaiveAttack(config, data, torch.Generator().manual_seed(0))
    attack.prepare(pool)
    patch = pool.images[attack.poison_index][:, 0, 13:15, 13:15]
    white, black = (1 - 0.3) / 0.4, (0 - 0.3) / 0.4
    board = torch.tensor([[white, black], [black, white]])
    assert torch.allclose(patch, board.expand(10, -1, -1))


def test_no_attack_poisons_nothing_but_measures_with_the_naive_patch():
    data = tiny_data()
    pool = pool_of(data)
    attack = NoAttack(tiny_config(), data, torch.Generator().manual_seed(0))
    attack.prepare(pool)
    assert torch.equal(pool.labels, data.labels)
    assert attack.trigger.pattern.sum() == 4  # 2x2 white patch, 1 channel


class TwoLayer(nn.Module):
    def __init__(self, size: int = 16, dead: bool = False):
        super().__init__()
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(size * size, 6)
        self.act = nn.ReLU()
        self.fc2 = nn.Linear(6, 4)
        with torch.no_grad():
            if dead:  # unit 0 has the largest weights but a very negative bias: dead on the trigger image
                self.fc1.weight[0] = 0.5
                self.fc1.bias[0] = -1000.0

    def forward(self, x):
        return self.fc2(self.act(self.fc1(self.flatten(x))))


def doorping(*overrides: str) -> tuple[DoorpingAttack, object]:
    data = tiny_data()
    pool = pool_of(data)
    attack = DoorpingAttack(tiny_config(*overrides), data, torch.Generator().manual_seed(0))
    attack.prepare(pool)
    return attack, pool


def test_doorping_update_moves_only_the_patch_and_restamps_the_pool():
    torch.manual_seed(0)
    attack, pool = doorping("poison.portion=0.1", "doorping.max_steps=200")
    start = attack.trigger.pattern.clone()
    attack.on_network(TwoLayer(), HookContext(iteration=1))
    pattern = attack.trigger.pattern
    assert not torch.equal(pattern, start)
    outside = attack.trigger.mask.expand_as(pattern) == 0
    assert (pattern[outside] == 0).all()
    assert pattern.min() >= 0 and pattern.max() <= 1
    expected = attack.train.normalize(attack.trigger.stamp(attack.originals))
    assert torch.allclose(pool.images[attack.poison_index], expected)


def test_authors_schedule_skips_the_last_outer_step_and_every_outer_does_not():
    torch.manual_seed(0)
    attack, _ = doorping()
    attack.on_network(TwoLayer(), HookContext(iteration=1, outer_step=0, is_last_outer=True))
    assert attack.updates == 0
    attack, _ = doorping("doorping.schedule=every_outer")
    attack.on_network(TwoLayer(), HookContext(iteration=1, outer_step=0, is_last_outer=True))
    assert attack.updates == 1


def pre_activation(net: TwoLayer, attack: DoorpingAttack) -> float:
    image = attack.trigger.stamp(torch.zeros(1, 1, 16, 16))
    with torch.no_grad():
        return float(net.fc1(net.flatten(attack.train.normalize(image)))[0, 0])


def test_dead_neuron_gets_no_push_unless_a_floor_is_set():
    torch.manual_seed(0)
    net = TwoLayer(dead=True)
    attack, _ = doorping()
    start = attack.trigger.pattern.clone()
    attack.on_network(net, HookContext(iteration=1))
    assert torch.allclose(attack.trigger.pattern, start, atol=1e-6)  # faithful: target 10 * 0 = 0, no move
    attack, _ = doorping("doorping.dead_neuron_floor=1.0", "doorping.max_steps=300")
    before = pre_activation(net, attack)
    attack.on_network(net, HookContext(iteration=1))
    assert pre_activation(net, attack) > before
    assert (attack.trigger.pattern[:, 13:15, 13:15] == 1).all()  # pushed to the brightest valid patch


def reference_optimise(net, attack, steps, stop):
    """The straightforward per-step loop in normalised space, host sync every step, as the authors'."""
    mean, std = attack.train.mean[0], attack.train.std[0]
    low, high = (0 - mean) / std, (1 - mean) / std
    patch = ((attack.trigger.pattern[:, 13:15, 13:15] - mean) / std).clone().requires_grad_(True)

    def act(values):
        image = F.pad(values - low, (13, 1, 13, 1)).unsqueeze(0) + low
        return net.act(net.fc1(net.flatten(image)))[:, [0]]

    with torch.no_grad():
        target = 10 * act(patch)
    optimizer = torch.optim.Adam([patch], lr=0.08, betas=(0.9, 0.99))
    for _ in range(steps):
        loss = F.mse_loss(act(patch), target)
        if loss.item() < stop:
            break
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            patch.clamp_(low, high)
    return (patch.detach() * std + mean).clamp(0, 1)


@pytest.mark.parametrize("stop", [0.0, 0.5, 5.0])
def test_buffered_stop_check_matches_a_per_step_check(stop):
    torch.manual_seed(1)
    net = TwoLayer()
    with torch.no_grad():
        net.fc1.weight.abs_()  # unit activations grow with the patch values
        net.fc1.weight[0] += 0.2
        net.fc1.bias.fill_(100.0)
    attack, _ = doorping("doorping.max_steps=37", f"doorping.stop_loss={stop}", "doorping.check_every=8")
    expected = reference_optimise(net, attack, 37, stop)
    assert not torch.equal(expected, attack.trigger.pattern[:, 13:15, 13:15])  # the patch does move
    attack.on_network(net, HookContext(iteration=1))
    assert torch.allclose(attack.trigger.pattern[:, 13:15, 13:15], expected, atol=1e-5)


def test_registry_names():
    assert set(ATTACKS) == {
        "none",
        "naive",
        "doorping",
        "target_patch",
        "invisible",
        "relax_trigger",
        "blend",
        "seeded",
        "inkdrop",
        "sneakdoor",
        "poisoned_distillation",
    }


def test_pinned_patch_stops_early_with_the_same_result_as_running_to_the_end():
    torch.manual_seed(2)
    net = TwoLayer()
    with torch.no_grad():
        net.fc1.weight.abs_()
        net.fc1.bias.fill_(100.0)  # alive on the black trigger image
    # stop_loss 0 never triggers; the clipped patch saturates at 1 and stays there
    full, _ = doorping("doorping.max_steps=400", "doorping.stop_loss=0", "doorping.check_every=400")
    early, _ = doorping("doorping.max_steps=400", "doorping.stop_loss=0", "doorping.check_every=8")
    full.on_network(net, HookContext(iteration=1))
    early.on_network(net, HookContext(iteration=1))
    assert torch.equal(full.trigger.pattern, early.trigger.pattern)
    assert (early.trigger.pattern[:, 13:15, 13:15] == 1).all()
    assert early.steps_total < 100 and full.steps_total == 400


class HookCounting:
    """Records how many forward hooks sit on the read module when the optimisation ends."""

    def optimise(self, patch, activations, target, bounds):
        out = super().optimise(patch, activations, target, bounds)
        self.hooks_during = len(self.net.act._forward_hooks)
        return out


@pytest.mark.parametrize(("baseline", "hooks_during"), [(False, 1), (True, 12 + 1)])
def test_one_hook_per_update_and_the_authors_baseline_piles_one_up_per_step(baseline, hooks_during):
    from ddbackdoor.bench.trigger import AuthorsDoorping

    base = AuthorsDoorping if baseline else DoorpingAttack
    counting = type("Counting", (HookCounting, base), {})
    data = tiny_data()
    attack = counting(
        tiny_config("doorping.max_steps=12", "doorping.stop_loss=0"), data, torch.Generator().manual_seed(0)
    )
    torch.manual_seed(0)
    attack.net = net = TwoLayer()
    attack.update_trigger(net)
    assert attack.hooks_during == hooks_during  # the baseline: one per step, plus the starting read
    assert not net.act._forward_hooks  # all removed when the update ends


def test_round_robin_takes_one_class_after_another():
    rows = {3: [30, 31, 32], 1: [10], 2: [20, 21]}
    assert round_robin(rows, [3, 1, 2], 5) == [30, 10, 20, 31, 21]
    assert round_robin(rows, [3, 1, 2], 9) == [30, 10, 20, 31, 21, 32]  # all there is


@pytest.mark.parametrize("init", ["real", "noise"])
def test_seeded_attack_starts_the_target_class_from_stamped_images_of_other_classes(init):
    data, pool, attack = prepared_seeded("poison.target=1", "seeded.images=2", "seeded.share=0.25")
    rows = attack.seed_rows
    assert len(rows) == 2 and set(rows) <= set(attack.poison_index.tolist())
    sources = data.labels[rows].tolist()
    assert 1 not in sources and len(set(sources)) == 2  # other classes, a different one each
    images, labels = init_synthetic(pool, 2, init, torch.Generator().manual_seed(1))
    target_slots = images[labels == 1]
    assert torch.equal(target_slots, pool.images[rows])
    white = (1 - 0.3) / 0.4
    assert torch.allclose(target_slots[:, :, 13:15, 13:15], torch.full((2, 1, 2, 2), white))
    assert attack.summary() == {"poisoned": 20, "seeded": 2, "seeded_sources": sources}
    pool.seeds = {}
    unseeded = init_synthetic(pool, 2, init, torch.Generator().manual_seed(1))[0]
    assert torch.equal(images[labels != 1], unseeded[labels != 1])  # no other slot changes


def test_seeded_attack_needs_enough_poisoned_images_of_other_classes():
    data = tiny_data(n_per_class=50)
    config = tiny_config("attack=seeded", "poison.portion=0.01", "seeded.images=2")
    attack = ATTACKS["seeded"](config, data, torch.Generator().manual_seed(0))
    with pytest.raises(DataError, match="raise poison.portion or lower seeded.images"):
        attack.prepare(pool_of(data))


def test_seeded_images_must_fit_the_target_class():
    with pytest.raises(ConfigError, match="at most 2 can start from poison"):
        tiny_config("attack=seeded", "seeded.images=3")


def test_seeded_attack_mixes_its_poison_into_every_target_batch_but_not_the_start():
    _, pool, attack = prepared_seeded("seeded.images=1", "seeded.share=0.25")
    stamped = pool.images[attack.poison_index]
    generator = torch.Generator().manual_seed(0)

    def poisoned_in(batch: torch.Tensor) -> int:
        return int(sum(bool((stamped == image).all(dim=(1, 2, 3)).any()) for image in batch))

    for _ in range(5):
        assert poisoned_in(pool.sample(0, 20, generator)) == 5  # a quarter, every draw
    assert poisoned_in(pool.sample(1, 20, generator)) == 0  # other classes: no poison at all
    plain = [poisoned_in(pool.sample(0, 20, generator, mix=False)) for _ in range(20)]
    assert len(set(plain)) > 1  # the start draws at the pool's rate, not a fixed share


def test_seeded_typical_starts_the_rest_of_the_target_class_from_clean_images_that_cover_it():
    data = tiny_data(n_per_class=50)
    data.images[data.labels == 0] = 0.05  # the target class: two tight clusters, 0.05 and 0.45
    data.images[(data.labels == 0).nonzero().flatten()[:25]] = 0.45
    pool = pool_of(data)
    config = tiny_config("attack=seeded", "poison.portion=0.1", "seeded.images=0", "seeded.typical=true")
    attack = ATTACKS["seeded"](config, data, torch.Generator().manual_seed(0))
    attack.prepare(pool)
    starts = data.denormalize(pool.seeds[0])  # ipc 2, no seeds: both start as typical images
    assert starts.shape[0] == 2
    assert sorted(round(float(s.mean()), 2) for s in starts) == [0.05, 0.45]  # one per cluster
    images, labels = init_synthetic(pool, 2, "real", torch.Generator().manual_seed(1))
    assert torch.equal(images[labels == 0], pool.seeds[0])
