"""KIP: the closed-form NTK against a wide finite network, KRR, and the distiller's step."""

import math

import pytest
import torch
from torch.func import functional_call, jacrev, vmap

from ddbackdoor.distill.kip import KIPDistiller, centred_one_hot
from ddbackdoor.distill.ntk import kernel_ridge_predict, relu_ntk

SIGMA_W, SIGMA_B = math.sqrt(2), 0.1


class NTKParamMLP(torch.nn.Module):
    """h = sigma_w / sqrt(fan_in) W x + sigma_b b with standard normal W, b: the parameterisation
    whose infinite-width kernel `relu_ntk` is."""

    def __init__(self, dims: list[int]):
        super().__init__()
        self.weights = torch.nn.ParameterList(
            torch.nn.Parameter(torch.randn(o, i)) for i, o in zip(dims[:-1], dims[1:], strict=True)
        )
        self.biases = torch.nn.ParameterList(torch.nn.Parameter(torch.randn(o)) for o in dims[1:])

    def forward(self, x):
        for index, (w, b) in enumerate(zip(self.weights, self.biases, strict=True)):
            x = SIGMA_W / math.sqrt(w.shape[1]) * x @ w.T + SIGMA_B * b
            if index < len(self.weights) - 1:
                x = torch.relu(x)
        return x[..., 0]


def empirical_ntk(net: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    params = {k: v.detach() for k, v in net.named_parameters()}
    jac = vmap(jacrev(lambda p, xi: functional_call(net, p, (xi,))), in_dims=(None, 0))(params, x)
    flat = torch.cat([j.flatten(1) for j in jac.values()], dim=1)
    return flat @ flat.T


@pytest.mark.parametrize(
    ("depth", "width", "worst", "average"), [(1, 8192, 0.05, 0.02), (2, 2048, 0.15, 0.04)]
)
def test_closed_form_ntk_matches_a_wide_network(depth, width, worst, average):
    torch.manual_seed(0)
    x = torch.randn(6, 20, dtype=torch.float64)
    expected = relu_ntk(x, x, depth, SIGMA_W, SIGMA_B)
    estimates = []
    for seed in range(8):  # the finite kernel fluctuates as 1/sqrt(width); average 8 networks
        torch.manual_seed(seed)
        net = NTKParamMLP([20] + [width] * depth + [1]).double()
        estimates.append(empirical_ntk(net, x))
    error = (torch.stack(estimates).mean(0) - expected).abs() / expected.abs().mean()
    assert error.max() < worst and error.mean() < average, (error.max(), error.mean())
    # (measured: depth 1 max 0.023 / mean 0.005; depth 2 max 0.095 / mean 0.021; a kernel of the
    # wrong depth is off by far more)
    other = relu_ntk(x, x, depth + 1, SIGMA_W, SIGMA_B)
    assert ((other - expected).abs() / expected.abs().mean()).max() > 2 * worst
    assert torch.linalg.eigvalsh(expected).min() > 0


def test_depth_zero_is_the_linear_kernel():
    x, y = torch.randn(3, 5), torch.randn(4, 5)
    assert torch.allclose(relu_ntk(x, y, 0), 2 * x @ y.T / 5 + 0.01)


def test_kernel_ridge_interpolates_its_support_with_tiny_ridge():
    torch.manual_seed(1)
    x = torch.randn(8, 10, dtype=torch.float64)
    y = centred_one_hot(torch.arange(8) % 4, 4).double()
    k = relu_ntk(x, x, 1)
    assert torch.allclose(kernel_ridge_predict(k, k, y, 1e-9), y, atol=1e-5)


def test_a_kip_step_lowers_the_loss_on_its_batch():
    from helpers import pool_of, tiny_config, tiny_data

    data = tiny_data(n_per_class=20)
    config = tiny_config("distill=kip", "ipc=2", "kip.batch_real=20", "kip.lr_img=0.05")
    distiller = KIPDistiller(config, lambda: None, progress=False)
    pool = pool_of(data)
    distiller.start(pool, torch.Generator().manual_seed(0))
    losses = [float(distiller.step(i, pool, [], torch.Generator().manual_seed(0))) for i in range(1, 8)]
    assert losses[-1] < losses[0]  # the same batch (same seed) each step: KRR fits it better
