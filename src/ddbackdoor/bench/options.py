"""(f) device options, each alone on a DC iteration."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch

from ..allocator import retained_heap
from ..errors import one_line_error
from .dc import dc_iteration
from .measure import (
    compare,
    cudnn_benchmark,
    tf32,
)
from .setup import STRAIGHTFORWARD, Bench, fast_dc_options


def option_base(device: torch.device) -> list[str]:
    """What (f) adds each option to: batched matching on CUDA, the plain loop on a CPU."""
    return fast_dc_options(device) if device.type == "cuda" else STRAIGHTFORWARD


def bench_options(b: Bench) -> dict:
    """(f) Device options at IPC 10, each alone against `option_base`."""
    s = b.scale
    base_options = option_base(b.device)
    base = dc_iteration(b, 10, base_options)
    # name -> (config overrides, context around the call)
    options: dict[str, tuple[list[str], Callable[[], contextlib.AbstractContextManager]]] = {
        "channels_last": (["dc.channels_last=true"], contextlib.nullcontext),
        # the first call (the untimed warm-up) compiles
        "torch_compile": (["dc.compile=true"], contextlib.nullcontext),
        "retained_heap": ([], retained_heap),
    }
    if b.reproducible:  # reproducible runs compile nothing
        del options["torch_compile"]
    if b.device.type == "cuda":
        options["cudnn_benchmark"] = ([], cudnn_benchmark)  # per-shape kernel search; DC's shapes are fixed
        options["tf32"] = ([], lambda: tf32(True))
        options["bf16_autocast"] = ([], lambda: torch.autocast("cuda", dtype=torch.bfloat16))
    out: dict = {}
    for name, (overrides, context) in options.items():
        fn = dc_iteration(b, 10, [*base_options, *overrides])

        def with_option(fn=fn, context=context) -> None:
            with context():
                fn()

        try:
            out[name] = compare(base, with_option, s.dc_repeats, b.device)
        except RuntimeError as err:  # e.g. an op without a bf16 double-backward kernel
            out[name] = {"missing": f"failed: {one_line_error(err)}"}
    out["base"] = base_options
    out["note"] = (
        "ratio > 1: the option is faster; tf32/bf16 change results beyond 1e-4 and stay off by default"
    )
    return out
