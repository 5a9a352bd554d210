"""INVISIBLE as intended (the authors' third attack): an additive full-frame delta under an adaptive
L-inf threshold."""

import pytest
import torch
from helpers import pool_of, tiny_config, tiny_data

from ddbackdoor.attacks import InvisibleAttack
from ddbackdoor.distill.base import HookContext
from ddbackdoor.models import create_model
from ddbackdoor.triggers import Trigger


def test_additive_trigger_stamps_clip_of_x_plus_delta():
    images = torch.tensor([[[[0.0, 0.5], [0.98, 0.2]]]])
    delta = torch.tensor([[[-0.1, 0.1], [0.1, -0.3]]])
    trigger = Trigger(delta, torch.ones(1, 2, 2), target=0, additive=True)
    expected = torch.tensor([[[[0.0, 0.6], [1.0, 0.0]]]])
    assert torch.allclose(trigger.stamp(images), expected)
    assert trigger.to("cpu").additive and trigger.clone().additive and trigger.with_pattern(delta).additive


def make_attack(*overrides: str):
    data = tiny_data(n_per_class=30)
    config = tiny_config("attack=invisible", "poison.portion=0.1", *overrides)
    attack = InvisibleAttack(config, data, torch.Generator().manual_seed(0))
    pool = pool_of(data)
    attack.prepare(pool)
    torch.manual_seed(0)
    net = create_model("convnet", 1, data.num_classes, 16, width=8, norm="none")
    return attack, pool, net, config


def test_starts_as_a_scaled_target_image_and_stays_under_its_threshold():
    attack, pool, net, config = make_attack()
    tau = config.invisible.tau
    delta = attack.trigger.pattern
    assert delta.shape == (1, 16, 16) and float(delta.abs().max()) <= tau + 1e-7
    assert attack.trigger.mask.sum() == 16 * 16  # full frame
    before = attack.originals.clone()
    attack.on_network(net, HookContext(iteration=1))
    record = attack.take_records()[0]
    assert record["loss_end"] < record["loss_start"]  # the units move towards their target
    assert record["linf"] <= 1.5 * tau  # the hinge penalty holds delta near the threshold
    stamped = pool.images[attack.poison_index]
    assert torch.allclose(stamped, attack.train.normalize((before + attack.trigger.pattern).clamp(0, 1)))
    assert (pool.labels[attack.poison_index] == config.poison.target).all()


def test_threshold_shrinks_only_after_an_update_that_stayed_under_it():
    attack, _, net, config = make_attack("invisible.penalty=1000", "invisible.lr=0.0001")
    tau = attack.tau
    attack.on_network(net, HookContext(iteration=1))
    assert attack.take_records()[0]["linf"] <= tau + 0.0001  # within one Adam step
    assert attack.tau == pytest.approx(tau * config.invisible.tau_decay)
    attack, _, net, _ = make_attack("invisible.penalty=0", "invisible.lr=0.05")
    attack.on_network(net, HookContext(iteration=1))
    assert attack.take_records()[0]["linf"] > tau and attack.tau == tau  # crossed it: tau stays


def test_no_update_on_the_last_outer_step_and_state_round_trip():
    attack, pool, net, _ = make_attack()
    before = attack.trigger.pattern.clone()
    attack.on_network(net, HookContext(iteration=1, is_last_outer=True))
    assert torch.equal(attack.trigger.pattern, before) and attack.updates == 0
    attack.on_network(net, HookContext(iteration=1))
    tensors, meta = attack.state()
    other, pool2, _, _ = make_attack()
    other.load_state(tensors, meta, pool2)
    assert torch.equal(other.trigger.pattern, attack.trigger.pattern) and other.trigger.additive
    assert (other.tau, other.updates) == (attack.tau, attack.updates)
    assert torch.equal(pool2.images[other.poison_index], pool.images[attack.poison_index])
