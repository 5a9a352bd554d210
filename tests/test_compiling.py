import logging

import pytest
import torch
import torch.nn.functional as F
from test_dc import make_dc

from ddbackdoor import compiling
from ddbackdoor.compiling import Compiler
from ddbackdoor.models import create_model


def real_gradients(x: torch.Tensor, y: torch.Tensor):
    def fn(module: torch.nn.Module) -> list[torch.Tensor]:
        return list(torch.autograd.grad(F.cross_entropy(module(x), y), list(module.parameters())))

    return fn


def test_compiled_real_gradients_match_eager_and_fresh_nets_reuse_the_code():
    torch.manual_seed(0)
    x, y = torch.randn(16, 1, 16, 16), torch.randint(0, 4, (16,))
    compiler = Compiler(enabled=True)
    for seed in (0, 1):  # a fresh network each DC iteration
        torch.manual_seed(seed)
        net = create_model("convnet", 1, 4, 16, width=8, depth=2)
        eager = real_gradients(x, y)(net)
        compiled = compiler.run(net, real_gradients(x, y))
        assert compiler.module(net) is not net and compiler.failure is None
        # as one vector: a conv bias before instance norm has a gradient of zero up to rounding
        a, b = torch.cat([g.flatten() for g in eager]), torch.cat([g.flatten() for g in compiled])
        assert float((a - b).norm() / a.norm()) < 1e-5


def test_a_failing_compile_falls_back_to_eager_once_from_the_same_random_state(monkeypatch, caplog):
    class Broken(torch.nn.Module):
        def forward(self, x):
            raise RuntimeError("C++ compile error: no compiler found\ndetails")

    monkeypatch.setattr(compiling.torch, "compile", lambda net, **options: Broken())
    net = torch.nn.Linear(2, 2)
    generator = torch.Generator().manual_seed(3)
    drawn: list[torch.Tensor] = []

    def fn(module: torch.nn.Module) -> torch.Tensor:
        drawn.append(torch.rand(3, generator=generator))  # randomness before the failing call
        return module(torch.ones(1, 2))

    compiler = Compiler(enabled=True)
    with caplog.at_level(logging.WARNING):
        out = compiler.run(net, fn, generator)
    assert torch.equal(out, net(torch.ones(1, 2)))
    assert torch.equal(drawn[0], drawn[1])  # the eager retry saw the same random numbers
    assert compiler.failure == "RuntimeError: C++ compile error: no compiler found"
    assert "continuing without it" in caplog.text
    assert compiler.module(net) is net and not compiler.active


@pytest.mark.parametrize(
    ("setting", "width", "reproducible", "active"),
    [
        ("auto", 64, False, True),
        ("auto", 16, False, False),
        ("true", 16, False, True),
        ("auto", 64, True, False),  # inductor compiles for the host's ISA: never in reproducible mode
    ],
)
def test_dc_compile_auto_means_a_cpu_and_a_wide_network(setting, width, reproducible, active):
    dc = make_dc(f"dc.compile={setting}", f"net.width={width}", f"reproducible={reproducible}")
    assert all(dc.compiler(torch.device("cpu"), p).enabled is active for p in ("matching", "training"))


def test_the_matching_pass_compiles_with_the_layout_kept_and_the_inner_loop_with_defaults(monkeypatch):
    """Channels-last conv + norm cost the real-image gradients ~5x accuracy at width 128 (docs/speed.md,
    tools/layout_accuracy_probe.py); too slow to show at test scale, so the wiring is checked."""
    seen: list[dict] = []
    monkeypatch.setattr(compiling.torch, "compile", lambda net, **kwargs: seen.append(kwargs) or net)
    dc = make_dc("dc.compile=true", "reproducible=false")
    net = torch.nn.Linear(2, 2)
    for purpose in ("matching", "training"):
        dc.compiler(torch.device("cpu"), purpose).module(net)
    assert seen == [{"options": compiling.EXACT_LAYOUT}, {"options": None}]
