import pytest
import torch
from torch import nn

from ddbackdoor.triggers import (
    capture_output,
    checkerboard_patch,
    patch_box,
    patch_mask,
    random_patch,
    select_layer,
    top_neurons,
    white_patch,
)


def test_patch_is_bottom_right_one_pixel_in():
    mask = patch_mask(32, 2)
    rows, cols = torch.nonzero(mask[0], as_tuple=True)
    assert sorted(set(rows.tolist())) == [29, 30]
    assert sorted(set(cols.tolist())) == [29, 30]
    assert patch_box(32, 3) == (28, 31)


def test_stamp_changes_only_masked_pixels_and_stays_in_range():
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(8, 3, 32, 32, generator=gen)
    trigger = random_patch(3, 32, 2, target=0, generator=gen)
    trigger.pattern[:, 29, 29] = 5.0  # an impossible value must be clipped by default
    stamped = trigger.stamp(images)
    changed = (stamped != images).any(dim=(0, 1))
    assert changed[29:31, 29:31].all()
    changed[29:31, 29:31] = False
    assert not changed.any()
    assert stamped.min() >= 0 and stamped.max() <= 1
    assert torch.equal(stamped[:, :, 29, 30], trigger.pattern[:, 29, 30].expand(8, 3))


def test_unclipped_trigger_keeps_impossible_values():
    trigger = white_patch(1, 32, 2, target=0, clip=False)
    trigger.pattern = trigger.pattern * 3.0
    assert trigger.stamp(torch.zeros(1, 1, 32, 32)).max() == 3.0


def test_white_patch_and_random_patch_values():
    white = white_patch(3, 32, 2, target=4)
    assert white.target == 4
    assert torch.equal(white.pattern, white.mask.expand(3, -1, -1))
    values = random_patch(3, 32, 2, 0, torch.Generator().manual_seed(1)).pattern[:, 29:31, 29:31]
    assert values.min() > 0 and values.max() <= 1


def test_checkerboard_patch_alternates_inside_the_mask_only():
    board = checkerboard_patch(3, 32, 4, target=1)
    assert board.target == 1 and torch.equal(board.mask, patch_mask(32, 4))
    inside = board.pattern[:, 27:31, 27:31]
    expected = torch.tensor([[1.0, 0, 1, 0], [0, 1, 0, 1], [1, 0, 1, 0], [0, 1, 0, 1]])
    assert torch.equal(inside, expected.expand(3, -1, -1))
    assert board.pattern.sum() == inside.sum() == 3 * 8
    stamped = board.stamp(torch.full((1, 3, 32, 32), 0.5))
    assert stamped.min() == 0 and stamped.max() == 1


def small_net() -> nn.Sequential:
    return nn.Sequential(nn.Flatten(), nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))


def test_select_layer_reads_activation_after_penultimate_linear():
    net = small_net()
    layer, read = select_layer(net, -2)
    assert layer is net[1] and read is net[2]
    layer, read = select_layer(net, -1)
    assert layer is net[3] and read is net[3]
    with pytest.raises(ValueError, match="out of range"):
        select_layer(net, -3)


def test_top_neurons_by_sum_of_absolute_incoming_weights():
    layer = nn.Linear(3, 4)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, -1, 0], [0, 0, -5], [2, 2, 2], [0.1, 0, 0]]))
    assert top_neurons(layer, 1).tolist() == [2]
    assert top_neurons(layer, 2).tolist() == [2, 1]


def test_capture_output_removes_its_hook():
    net = small_net()
    with capture_output(net[2]) as store:
        net(torch.ones(1, 4))
    assert store["out"].shape == (1, 3) and (store["out"] >= 0).all()
    assert not net[2]._forward_hooks
