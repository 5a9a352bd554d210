import pytest
import torch

from ddbackdoor.distill.augment import GROUPS, DiffAugment, Magnitudes, Op, Transform
from ddbackdoor.errors import ConfigError
from ddbackdoor.resolve import build_config


def dot_image(row: int, col: int, size: int = 8) -> torch.Tensor:
    image = torch.zeros(1, 1, size, size)
    image[0, 0, row, col] = 1.0
    return image


@pytest.mark.parametrize("group", list(GROUPS))
def test_one_draw_is_the_same_transform_on_every_batch(group):
    augment = DiffAugment(group)
    transform = augment.sample(torch.Generator().manual_seed(3), (16, 16))
    real = torch.randn(6, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    syn = real[:2].clone()
    out_real, out_syn = transform(real), transform(syn)
    assert torch.equal(out_real, transform(real.clone()))
    assert torch.equal(out_real[:2], out_syn)  # a shared draw broadcasts over any batch size
    again = augment.sample(torch.Generator().manual_seed(3), (16, 16))
    assert torch.equal(again(real), out_real)  # the generator alone fixes the draw


def test_flip_mirrors_a_known_pixel():
    out = Transform((Op("flip", torch.tensor([True])),))(dot_image(2, 1))
    assert torch.equal(out, dot_image(2, 6))
    always = DiffAugment("flip", Magnitudes(flip=1.0)).sample(torch.Generator().manual_seed(0), (8, 8))
    assert torch.equal(always(dot_image(2, 1)), dot_image(2, 6))


def test_crop_shifts_by_the_drawn_offset_with_zero_fill():
    out = Transform((Op("crop", torch.tensor([[2, -3]])),))(dot_image(5, 1))
    assert torch.equal(out, dot_image(3, 4))  # output (i, j) reads input (i + 2, j - 3)
    ones = Transform((Op("crop", torch.tensor([[2, -3]])),))(torch.ones(1, 1, 8, 8))
    assert ones[0, 0, 6:].sum() == 0 and ones[0, 0, :, :3].sum() == 0 and ones.sum() == 6 * 5
    gen = torch.Generator().manual_seed(0)
    shifts = torch.cat([DiffAugment("crop").sample(gen, (32, 32)).ops[0].value for _ in range(200)])
    assert int(shifts.min()) == -4 and int(shifts.max()) == 4  # 0.125 * 32


def test_cutout_zeroes_the_drawn_box():
    out = Transform((Op("cutout", torch.tensor([[2, 5, 3, 7]])),))(torch.ones(2, 3, 8, 8))
    expected = torch.ones(2, 3, 8, 8)
    expected[:, :, 2:5, 3:7] = 0
    assert torch.equal(out, expected)
    transform = DiffAugment("cutout").sample(torch.Generator().manual_seed(1), (16, 16))
    r0, r1, c0, c1 = transform.ops[0].value[0].tolist()
    assert r1 - r0 == 8 and c1 - c0 == 8  # half the side
    zeros = (transform(torch.ones(1, 1, 16, 16)) == 0).sum()
    assert int(zeros) == (min(r1, 16) - max(r0, 0)) * (min(c1, 16) - max(c0, 0))


def test_color_adds_brightness_and_keeps_the_means_it_scales_around():
    x = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    brightness, saturation, contrast = DiffAugment("color").sample(torch.Generator(), (8, 8), n=4).ops
    assert [brightness.name, saturation.name, contrast.name] == ["brightness", "saturation", "contrast"]
    shifted = Transform((brightness,))(x)
    assert torch.allclose(shifted, x + brightness.value.view(4, 1, 1, 1))
    assert bool((brightness.value.abs() <= 0.5).all())
    grey = x[:, :1].expand(4, 3, 8, 8)
    assert torch.allclose(Transform((saturation,))(grey), grey)  # no colour to saturate
    contrasted = Transform((contrast,))(x)
    assert torch.allclose(contrasted.mean(dim=(1, 2, 3)), x.mean(dim=(1, 2, 3)), atol=1e-6)


def test_affine_quarter_turn_is_rot90_and_drawn_angles_stay_in_range():
    x = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    quarter = torch.tensor([[[0.0, -1.0, 0.0], [1.0, 0.0, 0.0]]])
    assert torch.allclose(Transform((Op("rotate", quarter),))(x), torch.rot90(x, 1, (2, 3)), atol=1e-6)
    gen = torch.Generator().manual_seed(0)
    thetas = torch.cat([DiffAugment("rotate").sample(gen, (8, 8), n=50).ops[0].value for _ in range(4)])
    angles = torch.atan2(thetas[:, 1, 0], thetas[:, 0, 0]).rad2deg()
    assert float(angles.abs().max()) <= 15.0 and float(angles.abs().max()) > 10.0
    scales = DiffAugment("scale").sample(gen, (8, 8), n=200).ops[0].value[:, [0, 1], [0, 1]]
    assert float(scales.min()) >= 1 / 1.2 and float(scales.max()) <= 1.2


@pytest.mark.parametrize("group", list(GROUPS))
def test_gradients_reach_the_images(group):
    x = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(0), requires_grad=True)
    weights = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    out = DiffAugment(group)(x, torch.Generator().manual_seed(2))  # per-image draw
    (out * weights).sum().backward()
    assert x.grad is not None and bool(torch.isfinite(x.grad).all()) and float(x.grad.abs().sum()) > 0


def test_per_image_draws_differ_between_images():
    transform = DiffAugment("color").sample(torch.Generator().manual_seed(0), (8, 8), n=5)
    assert all(op.value.unique().numel() == 5 for op in transform.ops)


def test_a_shared_draw_cannot_be_confused_with_a_per_image_one():
    transform = DiffAugment("flip").sample(torch.Generator(), (8, 8), n=3)
    with pytest.raises(ValueError, match="drawn for 3 images"):
        transform(torch.zeros(2, 1, 8, 8))


def test_none_is_the_identity_and_unknown_names_are_config_errors():
    x = torch.rand(2, 1, 8, 8)
    assert torch.equal(DiffAugment("none")(x, torch.Generator()), x)
    with pytest.raises(ConfigError, match="unknown augmentation 'zoom'"):
        DiffAugment("color_zoom")
    with pytest.raises(ConfigError, match="dsa.strategy"):
        build_config({"profile": "smoke"}, ["dsa.strategy=crop_zoom"])
