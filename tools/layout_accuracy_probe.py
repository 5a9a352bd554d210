"""How far compiled real-image gradients are from float64, by memory layout, and what each costs.

Why: inductor runs a CPU network's convolutions channels-last by default, and a channels-last
convolution followed by a normalisation layer loses accuracy in the weight gradients; this is
the measurement behind `ddbackdoor.compiling.EXACT_LAYOUT` (docs/speed.md, CPU).
Usage: python tools/layout_accuracy_probe.py
"""

import copy
import time

import torch
import torch.nn.functional as F
from torch import nn

from ddbackdoor.bench.measure import relative
from ddbackdoor.bench.setup import DATA, SCALES, Bench
from ddbackdoor.compiling import EXACT_LAYOUT


def weight_grads(net: nn.Module, module: nn.Module, x: torch.Tensor, y: torch.Tensor) -> list[torch.Tensor]:
    return list(torch.autograd.grad(F.cross_entropy(module(x), y), list(net.parameters())))


def convnet_gradients() -> None:
    """The authors' ConvNet (width 128) on one class's real batch of 256, as DC's matching pass."""
    b = Bench(torch.device("cpu"), SCALES["cpu"], *DATA["fashion-mnist-mini"](0), 0)
    net = b.net(128)
    x = b.pool().sample(3, 256, b.generator())
    y = torch.full((256,), 3)
    net64 = copy.deepcopy(net).double()
    reference = weight_grads(net64, net64, x.double(), y)
    names = [name for name, _ in net.named_parameters()]
    channels_last = copy.deepcopy(net).to(memory_format=torch.channels_last)
    variants = {
        "eager": (net, net, x),
        "eager, channels-last tensors": (
            channels_last,
            channels_last,
            x.to(memory_format=torch.channels_last),
        ),
        "compiled (inductor default)": (net, torch.compile(net), x),
        "compiled, layout kept (EXACT_LAYOUT)": (net, torch.compile(net, options=EXACT_LAYOUT), x),
    }
    for label, (owner, module, inputs) in variants.items():
        weight_grads(owner, module, inputs, y)  # compiles
        grads = weight_grads(owner, module, inputs, y)
        worst = max(
            relative(g, r) for g, r, n in zip(grads, reference, names, strict=True) if n.endswith("weight")
        )
        seconds = []
        for _ in range(3):
            start = time.perf_counter()
            weight_grads(owner, module, inputs, y)
            seconds.append(time.perf_counter() - start)
        runs = ", ".join(f"{s:.2f}" for s in seconds)
        print(f"{label}: largest weight-gradient error vs float64 {worst:.1e}; {runs} s per pass", flush=True)


def conv_norm_gradients() -> None:
    """A convolution and instance norm alone, in eager mode, in both layouts."""
    torch.manual_seed(0)
    block = nn.Sequential(
        nn.Conv2d(128, 128, 3, padding=1), nn.GroupNorm(128, 128), nn.ReLU(), nn.AvgPool2d(2)
    )
    x, w = torch.randn(256, 128, 8, 8), torch.randn(256, 128, 4, 4)
    block64 = copy.deepcopy(block).double()
    reference = torch.autograd.grad((block64(x.double()) * w.double()).sum(), list(block64.parameters()))
    for label, layout in (
        ("default layout", torch.contiguous_format),
        ("channels-last", torch.channels_last),
    ):
        module = copy.deepcopy(block).to(memory_format=layout)
        grads = torch.autograd.grad((module(x.to(memory_format=layout)) * w).sum(), list(module.parameters()))
        conv_weight, norm_bias = relative(grads[0], reference[0]), relative(grads[3], reference[3])
        print(
            f"conv + instance norm, {label}: conv weight gradient {conv_weight:.1e}, norm bias gradient "
            f"{norm_bias:.1e} from float64"
        )


if __name__ == "__main__":
    conv_norm_gradients()
    convnet_gradients()
