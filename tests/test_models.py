"""Tests for the model registry and the architectures the toolkit relies on."""

from __future__ import annotations

from collections.abc import Callable
from functools import cache

import pytest
import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from ddbackdoor.errors import ConfigError
from ddbackdoor.models import MODELS, create_model, model_names, model_options

ALL_MODELS = ["alexnet", "convnet", "lenet", "mlp", "resnet18", "vgg11"]
# Models whose head has a penultimate Linear that DOORPING hooks.
HIDDEN_HEAD_MODELS = ["alexnet", "convnet", "lenet", "mlp"]
NUM_CLASSES = 10


@cache
def _shared_model(name: str, channels: int = 3, image_size: int = 32) -> nn.Module:
    """A default-option model, built once per configuration and shared.

    Only for tests that never change the model (no training, no seeding checks),
    so the file stays fast on a loaded CPU.
    """
    torch.manual_seed(0)
    return create_model(name, channels, NUM_CLASSES, image_size)


def _linears(model: nn.Module) -> list[nn.Linear]:
    return [m for m in model.modules() if isinstance(m, nn.Linear)]


def _convs(model: nn.Module) -> list[nn.Conv2d]:
    return [m for m in model.modules() if isinstance(m, nn.Conv2d)]


def _leaves(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if not list(m.children())]


def test_registry_holds_exactly_the_documented_models() -> None:
    assert model_names() == ALL_MODELS
    assert sorted(MODELS) == ALL_MODELS
    assert model_options("convnet") == ["act", "depth", "hidden", "norm", "pooling", "width"]
    assert model_options("vgg11") == ["norm"]
    assert model_options("resnet18") == ["norm"]
    assert model_options("mlp") == []


# Every model at 32x32 with 1 and 3 channels and at two other sizes; 64x64
# for all but ResNet18, whose CPU forward there would dominate the file's time.
SHAPE_CASES = [
    pytest.param(name, channels, size, id=f"{name}-{channels}x{size}")
    for name in ALL_MODELS
    for channels, size in [(1, 32), (3, 32), (1, 28), (3, 16), (3, 64)]
    if not (name == "resnet18" and size == 64)
]


@pytest.mark.parametrize(("name", "channels", "image_size"), SHAPE_CASES)
def test_logits_shape(name: str, channels: int, image_size: int) -> None:
    model = _shared_model(name, channels, image_size)
    x = torch.randn(2, channels, image_size, image_size)
    with torch.no_grad():
        logits = model(x)
    assert logits.shape == (2, NUM_CLASSES)
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("name", ["vgg11", "resnet18"])
def test_batchnorm_variants_run(name: str) -> None:
    model = create_model(name, 3, NUM_CLASSES, 16, norm="batchnorm")
    assert model(torch.randn(2, 3, 16, 16)).shape == (2, NUM_CLASSES)


@pytest.mark.parametrize(("channels", "padding"), [(1, 3), (3, 1)])
def test_convnet_first_conv_padding_and_flatten_size(channels: int, padding: int) -> None:
    model = _shared_model("convnet", channels, 32)
    convs = _convs(model)
    assert len(convs) == 3
    assert convs[0].padding == (padding, padding)
    assert all(c.padding == (1, 1) for c in convs[1:])
    assert all(c.out_channels == 128 for c in convs)
    linears = _linears(model)
    assert [(lin.in_features, lin.out_features) for lin in linears] == [
        (2048, 192),
        (192, NUM_CLASSES),
    ]


def test_convnet_parameter_count_is_pinned() -> None:
    model = _shared_model("convnet", 1, 32)
    assert sum(p.numel() for p in model.parameters()) == 692_554


def test_convnet_options_change_the_architecture() -> None:
    model = create_model(
        "convnet", 3, NUM_CLASSES, 32, width=64, depth=2, act="leakyrelu", pooling="maxpooling"
    )
    convs = _convs(model)
    assert len(convs) == 2
    assert all(c.out_channels == 64 for c in convs)
    assert any(isinstance(m, nn.LeakyReLU) for m in model.modules())
    assert any(isinstance(m, nn.MaxPool2d) for m in model.modules())
    assert not any(isinstance(m, nn.AvgPool2d) for m in model.modules())
    assert _linears(model)[0].in_features == 64 * 8 * 8

    sigmoid = create_model("convnet", 3, NUM_CLASSES, 32, act="sigmoid", pooling="none")
    assert any(isinstance(m, nn.Sigmoid) for m in sigmoid.features)
    assert not any(isinstance(m, nn.AvgPool2d | nn.MaxPool2d) for m in sigmoid.modules())
    assert _linears(sigmoid)[0].in_features == 128 * 32 * 32


def test_convnet_hidden_zero_is_the_single_linear_dc_head() -> None:
    model = create_model("convnet", 3, NUM_CLASSES, 32, hidden=0)
    linears = _linears(model)
    assert [(lin.in_features, lin.out_features) for lin in linears] == [(2048, NUM_CLASSES)]
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, NUM_CLASSES)


@pytest.mark.parametrize(
    ("name", "norm"),
    [
        ("convnet", "instancenorm"),
        ("convnet", "batchnorm"),
        ("convnet", "layernorm"),
        ("convnet", "groupnorm"),
        ("convnet", "none"),
        ("vgg11", "instancenorm"),
        ("vgg11", "batchnorm"),
        ("vgg11", "none"),
        ("resnet18", "instancenorm"),
        ("resnet18", "batchnorm"),
    ],
)
def test_norm_option_builds_the_requested_layers(name: str, norm: str) -> None:
    model = create_model(name, 3, NUM_CLASSES, 32, norm=norm)
    batchnorms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    groupnorms = [m for m in model.modules() if isinstance(m, nn.GroupNorm)]
    if norm == "batchnorm":
        assert batchnorms
        assert not groupnorms
        return
    assert not batchnorms
    if norm == "none":
        assert not groupnorms
        return
    assert groupnorms
    expected_groups = {"layernorm": 1, "groupnorm": 4}
    for layer in groupnorms:
        assert layer.affine
        assert layer.num_groups == expected_groups.get(norm, layer.num_channels)


def test_default_norms_are_instancenorm_style_groupnorm() -> None:
    for name in ("convnet", "vgg11", "resnet18"):
        model = _shared_model(name)
        groupnorms = [m for m in model.modules() if isinstance(m, nn.GroupNorm)]
        assert groupnorms, name
        assert all(g.num_groups == g.num_channels for g in groupnorms), name
        assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules()), name
    for name in ("alexnet", "lenet", "mlp"):
        model = _shared_model(name)
        assert not any(isinstance(m, nn.BatchNorm2d | nn.GroupNorm) for m in model.modules())


def test_construction_leaves_batchnorm_statistics_untouched() -> None:
    model = create_model("convnet", 3, NUM_CLASSES, 32, norm="batchnorm")
    assert model.training
    for layer in model.modules():
        if isinstance(layer, nn.BatchNorm2d):
            assert layer.num_batches_tracked.item() == 0
            assert torch.equal(layer.running_mean, torch.zeros_like(layer.running_mean))
            assert torch.equal(layer.running_var, torch.ones_like(layer.running_var))


def test_unknown_model_name_lists_accepted_names() -> None:
    with pytest.raises(ConfigError, match="'resnet50'") as info:
        create_model("resnet50", 3, NUM_CLASSES)
    message = str(info.value)
    assert "\n" not in message
    for name in ALL_MODELS:
        assert name in message


def test_unknown_option_lists_accepted_options() -> None:
    with pytest.raises(ConfigError, match="'widht'") as info:
        create_model("convnet", 3, NUM_CLASSES, widht=64)
    for option in ("act", "depth", "hidden", "norm", "pooling", "width"):
        assert option in str(info.value)
    with pytest.raises(ConfigError, match="'width'.*accepted: norm"):
        create_model("vgg11", 3, NUM_CLASSES, width=64)
    with pytest.raises(ConfigError, match="takes no options.*'norm'"):
        create_model("mlp", 3, NUM_CLASSES, norm="batchnorm")


@pytest.mark.parametrize(
    ("name", "options", "bad", "accepted"),
    [
        ("convnet", {"norm": "bn"}, "'bn'", ["batchnorm", "groupnorm", "instancenorm", "none"]),
        ("convnet", {"act": "gelu"}, "'gelu'", ["leakyrelu", "relu", "sigmoid"]),
        ("convnet", {"pooling": "max"}, "'max'", ["avgpooling", "maxpooling", "none"]),
        ("vgg11", {"norm": "layernorm"}, "'layernorm'", ["batchnorm", "instancenorm", "none"]),
        ("resnet18", {"norm": "none"}, "'none'", ["batchnorm", "instancenorm"]),
    ],
)
def test_bad_option_value_lists_accepted_values(
    name: str, options: dict[str, str], bad: str, accepted: list[str]
) -> None:
    with pytest.raises(ConfigError) as info:
        create_model(name, 3, NUM_CLASSES, **options)
    message = str(info.value)
    assert bad in message
    assert "\n" not in message
    for value in accepted:
        assert value in message


@pytest.mark.parametrize(
    ("args", "options", "pattern"),
    [
        ((3, NUM_CLASSES, 32), {"width": 0}, "width must be an int >= 1, got 0"),
        ((3, NUM_CLASSES, 32), {"depth": "3"}, "depth must be an int >= 1"),
        ((3, NUM_CLASSES, 32), {"hidden": -1}, "hidden must be an int >= 0"),
        ((3, NUM_CLASSES, 32), {"width": True}, "width must be an int"),
        ((3, NUM_CLASSES, 32), {"norm": "groupnorm", "width": 30}, "divisible by 4"),
        ((0, NUM_CLASSES, 32), {}, "channels must be an int >= 1"),
        ((3, 0, 32), {}, "num_classes must be an int >= 1"),
        ((3, NUM_CLASSES, 8), {}, "image_size must be an int >= 16"),
        ((3, NUM_CLASSES, 16), {"depth": 6}, "image_size 16 is too small"),
    ],
)
def test_bad_numbers_raise_config_error(
    args: tuple[int, int, int], options: dict[str, object], pattern: str
) -> None:
    with pytest.raises(ConfigError, match=pattern):
        create_model("convnet", *args, **options)


@pytest.mark.parametrize("name", ALL_MODELS)
def test_no_inplace_modules(name: str) -> None:
    model = _shared_model(name)
    for module in model.modules():
        assert not getattr(module, "inplace", False), module


@pytest.mark.parametrize("name", ALL_MODELS)
def test_same_seed_gives_identical_parameters(name: str) -> None:
    torch.manual_seed(123)
    first = create_model(name, 3, NUM_CLASSES, 16)
    torch.manual_seed(123)
    second = create_model(name, 3, NUM_CLASSES, 16)
    torch.manual_seed(124)
    third = create_model(name, 3, NUM_CLASSES, 16)
    first_state, second_state, third_state = (m.state_dict() for m in (first, second, third))
    assert first_state.keys() == second_state.keys()
    for key, value in first_state.items():
        assert torch.equal(value, second_state[key]), key
    assert any(not torch.equal(v, third_state[k]) for k, v in first_state.items())


@pytest.mark.parametrize("name", ALL_MODELS)
def test_head_ends_in_linear_to_num_classes(name: str) -> None:
    model = _shared_model(name)
    assert _linears(model)[-1].out_features == NUM_CLASSES
    assert _leaves(model)[-1] is _linears(model)[-1]


@pytest.mark.parametrize("name", HIDDEN_HEAD_MODELS)
def test_penultimate_linear_is_followed_by_relu_module(name: str) -> None:
    model = _shared_model(name)
    leaves = _leaves(model)
    penultimate = _linears(model)[-2]
    following = leaves[leaves.index(penultimate) + 1]
    assert type(following) is nn.ReLU


def test_alexnet_and_vgg11_flatten_sizes_at_32() -> None:
    assert _linears(_shared_model("alexnet"))[0].in_features == 4096
    for channels in (1, 3):
        vgg = _shared_model("vgg11", channels, 32)
        assert [lin.in_features for lin in _linears(vgg)] == [512]
        assert _convs(vgg)[0].padding == ((3, 3) if channels == 1 else (1, 1))
    # The pool that would shrink 16x16 input to 1x1 before the last convs is left out.
    assert [lin.in_features for lin in _linears(_shared_model("vgg11", 3, 16))] == [512]
    resnet = _shared_model("resnet18")
    assert [lin.in_features for lin in _linears(resnet)] == [512]


LossFn = Callable[[dict[str, torch.Tensor], torch.Tensor, torch.Tensor], torch.Tensor]


def _ce_loss(model: nn.Module) -> LossFn:
    def loss(params: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        logits = functional_call(model, params, (x,))
        return nn.functional.cross_entropy(logits, y)

    return loss


def test_functional_call_grad_on_convnet() -> None:
    torch.manual_seed(0)
    model = create_model("convnet", 3, NUM_CLASSES, 32)
    params = {k: v.detach() for k, v in model.named_parameters()}
    x = torch.randn(4, 3, 32, 32)
    y = torch.randint(0, NUM_CLASSES, (4,))
    grads = grad(_ce_loss(model))(params, x, y)
    assert grads.keys() == params.keys()
    for key, value in params.items():
        assert grads[key].shape == value.shape, key
    assert any(g.abs().sum() > 0 for g in grads.values())


def test_vmap_per_sample_grads_on_convnet() -> None:
    torch.manual_seed(0)
    model = create_model("convnet", 3, NUM_CLASSES, 16, width=16)
    params = {k: v.detach() for k, v in model.named_parameters()}
    x = torch.randn(3, 3, 16, 16)
    y = torch.randint(0, NUM_CLASSES, (3,))
    loss = _ce_loss(model)

    def one(xi: torch.Tensor, yi: torch.Tensor) -> dict[str, torch.Tensor]:
        return grad(loss)(params, xi.unsqueeze(0), yi.unsqueeze(0))

    per_sample = vmap(one)(x, y)
    for key, value in params.items():
        assert per_sample[key].shape == (3, *value.shape), key


@pytest.mark.parametrize("name", HIDDEN_HEAD_MODELS)
def test_double_backward_reaches_the_input(name: str) -> None:
    """Gradient matching differentiates a parameter gradient w.r.t. the images."""
    model = _shared_model(name, 3, 16)
    x = torch.randn(2, 3, 16, 16, requires_grad=True)
    y = torch.randint(0, NUM_CLASSES, (2,))
    loss = nn.functional.cross_entropy(model(x), y)
    params = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss, params, create_graph=True)
    matching = sum((g**2).sum() for g in grads)
    assert isinstance(matching, torch.Tensor)
    (x_grad,) = torch.autograd.grad(matching, x)
    assert x_grad.shape == x.shape
    assert torch.isfinite(x_grad).all()
    assert x_grad.abs().sum() > 0
