"""DOORPING: re-optimise the trigger during distillation (NDSS'23).

Each update picks the top-k units (by sum of |incoming weights|) of the chosen
layer of the current network, then runs Adam on the trigger patch so that the
trigger on a black image drives those units to alpha times their starting
activation. The poisoned real images are then re-stamped.

The stop test (loss < stop_loss) is evaluated on the device every step and
read back only every `check_every` steps; the patch of every step is kept in
a small buffer, so the result is exactly the patch of the first step whose
loss was under the threshold, as with a per-step check, without a host sync
per step.

`dead_neuron_floor > 0` is our fix for units that are dead at the start (the
authors' target alpha * 0 = 0 leaves them dead): the unit's pre-activation is
driven towards alpha * max(a0, floor), which has a gradient even below zero.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from ..distill.base import HookContext
from ..distill.pool import RealPool
from ..errors import one_line_error
from ..triggers import Trigger, capture_output, patch_box, random_patch, select_layer, top_neurons
from .base import PatchAttack, frozen_network


def pinned(
    patch: torch.Tensor,
    before: torch.Tensor,
    grad: torch.Tensor,
    momentum: torch.Tensor,
    bounds: tuple[torch.Tensor, torch.Tensor],
) -> bool:
    """True when no further Adam step can move the clipped patch: an exact early stop.

    If the last step left the patch unchanged, every value sits at a bound, and
    both the gradient and Adam's first moment push it outwards, then the next
    gradient is the same, the moment keeps its sign, and clipping undoes every
    later step: the patch after max_steps would be this one.
    """
    if not torch.equal(patch.detach(), before):
        return False
    low, high = (bound.expand_as(patch) for bound in bounds)
    up = (patch == high) & (momentum < 0) & (grad <= 0)
    down = (patch == low) & (momentum > 0) & (grad >= 0)
    return bool((up | down).all())


def patch_summary(pixels: torch.Tensor) -> dict:
    """A trigger patch in pixel space, before any clipping: its range, the share of values a
    real image cannot hold (outside [0, 1], with 1e-6 slack for the normalisation round trip)
    and the values themselves ([C][size][size]), so any earlier trigger can be re-scored."""
    outside = (pixels < -1e-6) | (pixels > 1 + 1e-6)
    return {
        "patch_min": float(pixels.min()),
        "patch_max": float(pixels.max()),
        "outside_unit_share": float(outside.float().mean()),
        "patch": pixels.detach().cpu().tolist(),
    }


class EagerSteps:
    """DOORPING's Adam steps on the patch, `count` at a time, recording each step's starting
    patch and loss in slot order (the buffered stop test reads them once per window)."""

    def __init__(
        self,
        patch: torch.Tensor,
        activations: Callable[[torch.Tensor], torch.Tensor],
        target: torch.Tensor,
        bounds: tuple[torch.Tensor, torch.Tensor] | None,
        lr: float,
        window: int,
        capturable: bool = False,
    ):
        self.patch, self.activations, self.target, self.bounds = patch, activations, target, bounds
        self.optimizer = torch.optim.Adam([patch], lr=lr, betas=(0.9, 0.99), capturable=capturable)
        self.history = torch.empty((window, *patch.shape), device=patch.device)
        self.losses = torch.empty(window, device=patch.device)
        self.last_grad = torch.zeros_like(patch)

    def step(self, slot: int) -> None:
        patch = self.patch
        loss = F.mse_loss(self.activations(patch), self.target)
        self.history[slot].copy_(patch.detach())
        self.losses[slot].copy_(loss.detach())
        (grad,) = torch.autograd.grad(loss, patch)
        patch.grad = grad
        self.optimizer.step()
        with torch.no_grad():
            if self.bounds is not None:
                patch.copy_(torch.maximum(torch.minimum(patch, self.bounds[1]), self.bounds[0]))
            self.last_grad.copy_(grad)

    def run(self, count: int) -> None:
        for slot in range(count):
            self.step(slot)

    def momentum(self) -> torch.Tensor:
        return self.optimizer.state[self.patch]["exp_avg"]


class GraphedSteps(EagerSteps):
    """The same steps as CUDA graphs: one of a full window, one of the last partial window,
    captured on first use (after a warm-up step whose effect on the patch and Adam is undone).
    Adam runs `capturable` (its step count on the device), which rounds its bias correction
    slightly differently from the eager default: graphed and eager patches agree to rounding."""

    def __init__(self, patch, activations, target, bounds, lr, window):
        super().__init__(patch, activations, target, bounds, lr, window, capturable=True)
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.pool = None
        start = patch.detach().clone()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # creates Adam's state and warms the kernels up
            self.step(0)
        torch.cuda.current_stream().wait_stream(side)
        with torch.no_grad():
            patch.copy_(start)
            for value in self.optimizer.state[patch].values():
                value.zero_()
        patch.grad = None

    def run(self, count: int) -> None:
        if count not in self.graphs:
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self.pool):
                for slot in range(count):
                    self.step(slot)
            self.pool = graph.pool()
            self.graphs[count] = graph
        self.graphs[count].replay()


class DoorpingAttack(PatchAttack):
    """DOORPING (the paper): the patch re-optimised during distillation to excite chosen neurons."""

    name = "doorping"
    description = "DOORPING (the paper): the patch re-optimised during distillation to excite chosen neurons"
    sections = ("poison", "doorping")

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.graphs_usable = True
        self.stop_reason = "max_steps"
        self.first_loss = float("nan")
        self.pool: RealPool | None = None
        self.updates = 0
        self.steps_total = 0
        self.last_loss = float("nan")

    def initial_trigger(self) -> Trigger:
        p = self.config.poison
        return random_patch(
            self.train.channels, self.train.image_size, p.trigger_size, p.target, self.generator, p.clip
        )

    def prepare(self, pool: RealPool) -> None:
        super().prepare(pool)
        self.pool = pool

    def on_network(self, net: nn.Module, ctx: HookContext) -> None:
        if self.config.doorping.schedule == "authors" and ctx.is_last_outer:
            return
        self.update_trigger(net, ctx)
        if self.pool is not None:
            self.restamp(self.pool)

    def update_trigger(self, net: nn.Module, ctx: HookContext | None = None) -> None:
        """One DOORPING update. Adam works on the normalised patch values, as the
        authors' code does, so lr 0.08 means the same step size as theirs."""
        cfg = self.config.doorping
        device = next(net.parameters()).device
        layer, read = select_layer(net, cfg.layer)
        if cfg.dead_neuron_floor > 0:
            read = layer  # the pre-activation still has a gradient where the unit is dead
        units = top_neurons(layer, cfg.topk)
        size, image_size = self.config.poison.trigger_size, self.train.image_size
        start, stop = patch_box(image_size, size)
        pad = (start, image_size - stop, start, image_size - stop)
        mean = torch.tensor(self.train.mean, device=device).view(-1, 1, 1)
        std = torch.tensor(self.train.std, device=device).view(-1, 1, 1)
        black = -mean / std  # a black pixel, normalised
        bounds = (black, (1 - mean) / std) if self.config.poison.clip else None
        pixels = self.trigger.pattern[:, start:stop, start:stop].to(device)
        values = ((pixels - mean) / std).clone().requires_grad_(True)
        with frozen_network(net), self.unit_reader(net, read, units) as read_units:

            def activations(patch: torch.Tensor) -> torch.Tensor:
                return read_units((F.pad(patch - black, pad) + black).unsqueeze(0))  # on black

            with torch.no_grad():
                start_act = activations(values)
                target = cfg.alpha * start_act.clamp(min=cfg.dead_neuron_floor)
            steps_before = self.steps_total
            self.stop_reason, self.first_loss = "max_steps", float("nan")
            values = self.optimise(values, activations, target, bounds)
        pattern = torch.zeros_like(self.trigger.pattern)
        pixels = (values.detach() * std + mean).to(pattern.device)
        pattern[:, start:stop, start:stop] = pixels.clamp(0, 1) if self.config.poison.clip else pixels
        self.trigger = self.trigger.with_pattern(pattern)
        self.updates += 1
        self.records.append(
            {
                "iteration": None if ctx is None else ctx.iteration,
                "outer": None if ctx is None else ctx.outer_step,
                "units": units.flatten().tolist(),
                "start_activation": start_act.flatten().tolist(),
                "target_activation": target.flatten().tolist(),
                "loss_start": self.first_loss,
                "loss_end": self.last_loss,
                "steps": self.steps_total - steps_before,
                "stopped": self.stop_reason,
                **patch_summary(pixels),
                "box": [start, stop],
            }
        )

    @contextmanager
    def unit_reader(
        self, net: nn.Module, read: nn.Module, units: torch.Tensor
    ) -> Iterator[Callable[[torch.Tensor], torch.Tensor]]:
        """`image -> the chosen units' activations`, through one hook for the whole update,
        removed at its end (the authors' code found the layer and added a hook at every step)."""
        with capture_output(read) as store:

            def read_units(image: torch.Tensor) -> torch.Tensor:
                net(image)
                return store["out"][:, units]

            yield read_units

    def optimise(
        self,
        patch: torch.Tensor,
        activations: Callable[[torch.Tensor], torch.Tensor],
        target: torch.Tensor,
        bounds: tuple[torch.Tensor, torch.Tensor] | None,
    ) -> torch.Tensor:
        """Adam on the patch until the loss is under `stop_loss`, the box pins it, or max_steps.

        On CUDA the steps run as captured CUDA graphs (`GraphedSteps`): a step of a one-image
        network is some 40 tiny kernels, so launching them one by one is what costs. A capture
        that fails falls back to the eager loop, once per attack, with a warning.
        """
        if patch.is_cuda and self.graphs_usable:
            start = patch.detach().clone()
            try:
                return self.optimise_windows(patch, activations, target, bounds, GraphedSteps)
            except RuntimeError as err:  # a capture the driver or an op refused
                self.graphs_usable = False
                reason = one_line_error(err)
                warnings.warn(f"DOORPING: CUDA graph capture failed ({reason}); eager now", stacklevel=2)
                with torch.no_grad():
                    patch.copy_(start)
        return self.optimise_windows(patch, activations, target, bounds, EagerSteps)

    def optimise_windows(
        self,
        patch: torch.Tensor,
        activations: Callable[[torch.Tensor], torch.Tensor],
        target: torch.Tensor,
        bounds: tuple[torch.Tensor, torch.Tensor] | None,
        steps_kind: type[EagerSteps],
    ) -> torch.Tensor:
        cfg = self.config.doorping
        window = min(cfg.check_every, cfg.max_steps)
        steps = steps_kind(patch, activations, target, bounds, cfg.lr, window)
        done = 0
        while done < cfg.max_steps:
            count = min(window, cfg.max_steps - done)
            steps.run(count)  # steps done+1 .. done+count; slot i holds the patch before step done+i+1
            if done == 0:
                self.first_loss = float(steps.losses[0])
            below = (steps.losses[:count] < cfg.stop_loss).nonzero()
            if below.numel():  # one host sync per window
                first = int(below[0, 0])
                self.stop_reason = "loss"
                self.steps_total += done + first
                self.last_loss = float(steps.losses[first])
                return steps.history[first].clone()
            done += count
            if bounds is not None and pinned(
                patch, steps.history[count - 1], steps.last_grad, steps.momentum(), bounds
            ):
                self.stop_reason = "pinned"
                self.steps_total += done
                self.last_loss = float(steps.losses[count - 1])
                return patch.detach()
        self.steps_total += cfg.max_steps
        with torch.no_grad():
            self.last_loss = float(F.mse_loss(activations(patch), target))
        return patch.detach()

    def state(self) -> tuple[dict[str, torch.Tensor], dict]:
        tensors, _ = super().state()
        return tensors, {
            "updates": self.updates,
            "steps_total": self.steps_total,
            "last_loss": self.last_loss,
        }

    def load_state(self, tensors: dict[str, torch.Tensor], meta: dict, pool: RealPool) -> None:
        super().load_state(tensors, meta, pool)
        self.updates, self.steps_total = int(meta["updates"]), int(meta["steps_total"])
        self.last_loss = float(meta["last_loss"])

    def summary(self) -> dict:
        return {
            **super().summary(),
            "trigger_updates": self.updates,
            "trigger_steps": self.steps_total,
            "last_trigger_loss": self.last_loss,
        }
