"""torch.compile for a network's plain forward/backward passes, falling back to eager once.

Why: on a CPU, the norm, ReLU and pooling layers of a wide ConvNet are memory-bound passes
over large activations; compiled, each layer's forward and backward become one fused loop
(docs/speed.md). Only plain passes are compiled: the synthetic-image gradients of gradient
matching need a double backward, which compiled graphs do not support.

Inductor's layout optimisation runs a CPU network's convolutions channels-last. That is faster,
but a channels-last convolution followed by a normalisation layer loses accuracy in the weight
gradients: for the authors' ConvNet (width 128) on a CPU they were 2.3e-4 from float64 against
4.4e-5 in eager mode, and the same loss shows in eager mode with channels-last tensors. Passes
whose gradients are a target (gradient matching) therefore compile with `EXACT_LAYOUT`.

Compiling needs a working C++ toolchain on a CPU (Triton on a GPU). Where it fails, the
failure is logged once and the run continues in eager mode, with the same random stream.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TypeVar

import torch
from torch import nn

from .errors import one_line_error

log = logging.getLogger(__name__)
T = TypeVar("T")

# compile options that keep each tensor's memory layout: gradients as accurate as eager
EXACT_LAYOUT: dict[str, object] = {"layout_optimization": False}


class Compiler:
    """Hands out compiled twins of networks (sharing their parameters) while compiling works."""

    def __init__(self, enabled: bool, options: dict[str, object] | None = None) -> None:
        self.enabled = enabled
        self.options = options  # inductor options, e.g. EXACT_LAYOUT
        self.failure: str | None = None  # why compiling was given up, if it was
        self._last: tuple[nn.Module, nn.Module] | None = None

    @property
    def active(self) -> bool:
        return self.enabled and self.failure is None

    def module(self, net: nn.Module) -> nn.Module:
        """`net`'s compiled twin; a fresh net of the same architecture reuses the compiled code."""
        if not self.active:
            return net
        if self._last is None or self._last[0] is not net:
            self._last = (net, torch.compile(net, options=self.options))
        return self._last[1]

    def run(
        self, net: nn.Module, fn: Callable[[nn.Module], T], generator: torch.Generator | None = None
    ) -> T:
        """`fn(compiled net)`; if compiling fails, `fn(net)` from the same generator state."""
        module = self.module(net)
        if module is net:
            return fn(net)
        state = None if generator is None else generator.get_state()
        try:
            return fn(module)
        except Exception as err:  # noqa: BLE001 - any compiler failure (toolchain, unsupported op)
            self.failure = one_line_error(err)
            self._last = None
            log.warning("torch.compile failed (%s); continuing without it", self.failure)
            if state is not None:
                generator.set_state(state)
            return fn(net)
