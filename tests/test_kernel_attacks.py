"""SIMPLE-TRIGGER (blend) and RELAX-TRIGGER: valid pixels, the blend's arithmetic, the kernel objective."""

import torch
from helpers import pool_of, tiny_config, tiny_data

from ddbackdoor.attacks import BlendAttack, RelaxTriggerAttack
from ddbackdoor.triggers import Trigger, white_patch


def test_blend_is_a_convex_mix_and_opacity_one_is_the_patch_bit_for_bit():
    images = torch.rand(3, 1, 8, 8)
    pattern = torch.rand(1, 8, 8)
    blended = Trigger(pattern, torch.ones(1, 8, 8), 0, opacity=0.1).stamp(images)
    assert torch.allclose(blended, 0.9 * images + 0.1 * pattern)
    assert blended.min() >= 0 and blended.max() <= 1
    patch = white_patch(1, 8, 2, 0)
    assert torch.equal(patch.stamp(images), images * (1 - patch.mask) + patch.pattern * patch.mask)
    assert (
        patch.clone().opacity == 1.0 and Trigger(pattern, patch.mask, 0, opacity=0.3).to("cpu").opacity == 0.3
    )


def test_blend_attack_poisons_with_its_pattern():
    data = tiny_data()
    config = tiny_config("attack=blend", "poison.portion=0.1", "blend.opacity=0.2")
    attack = BlendAttack(config, data, torch.Generator().manual_seed(0))
    pool = pool_of(data)
    attack.prepare(pool)
    expected = 0.8 * attack.originals + 0.2 * attack.trigger.pattern
    assert torch.allclose(pool.images[attack.poison_index], data.normalize(expected), atol=1e-6)


def test_relax_trigger_lowers_the_kernel_objective_and_stays_valid():
    data = tiny_data(n_per_class=30)
    overrides = ("attack=relax_trigger", "poison.trigger_size=6", "relax_trigger.per_class=10")
    config = tiny_config(*overrides, "relax_trigger.steps=30")
    attack = RelaxTriggerAttack(config, data, torch.Generator().manual_seed(0))
    pool = pool_of(data)
    attack.prepare(pool)
    assert attack.losses[-1] < attack.losses[0]
    pattern = attack.trigger.pattern[attack.trigger.mask.expand_as(attack.trigger.pattern).bool()]
    assert pattern.min() > 0 and pattern.max() < 1  # a sigmoid: valid pixels, never pinned
    stamped = attack.trigger.stamp(attack.originals)
    assert torch.allclose(pool.images[attack.poison_index], data.normalize(stamped))
    assert attack.summary()["trigger_loss_end"] == attack.losses[-1]
