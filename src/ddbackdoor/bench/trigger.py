"""(b) one DOORPING trigger update: the authors' loop vs ours (and CUDA graphs)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch
import torch.nn.functional as F

from ..attacks.doorping import DoorpingAttack
from ..triggers import select_layer
from .measure import (
    compare,
)
from .setup import Bench, in_retained_heap


class AuthorsDoorping(DoorpingAttack):
    """The authors' update loop: at every Adam step, find the layer by walking the network, add a
    forward hook that is never removed (so step i runs i hooks) and read the loss back to the host.

    The bench removes the piled-up hooks when the update ends, so that repeats start alike; the
    authors' hooks stayed on the network for the rest of the DC iteration, slowing later updates
    further, which this baseline leaves out.
    """

    @contextlib.contextmanager
    def unit_reader(self, net, read, units):
        handles: list[torch.utils.hooks.RemovableHandle] = []
        cfg = self.config.doorping

        def read_units(image: torch.Tensor) -> torch.Tensor:
            layer, module = select_layer(net, cfg.layer)  # looked up again at every step
            store: dict[str, torch.Tensor] = {}
            handles.append(
                (layer if cfg.dead_neuron_floor > 0 else module).register_forward_hook(
                    lambda _m, _i, output: store.__setitem__("out", output)
                )
            )
            net(image)
            return store["out"][:, units]

        try:
            yield read_units
        finally:
            for handle in handles:
                handle.remove()

    def optimise(self, patch, activations, target, bounds):
        cfg = self.config.doorping
        optimizer = torch.optim.Adam([patch], lr=cfg.lr, betas=(0.9, 0.99))
        for step in range(cfg.max_steps):
            loss = F.mse_loss(activations(patch), target)
            if loss.item() < cfg.stop_loss:
                self.steps_total += step
                return patch.detach()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if bounds is not None:
                with torch.no_grad():
                    patch.copy_(torch.maximum(torch.minimum(patch, bounds[1]), bounds[0]))
        self.steps_total += cfg.max_steps
        return patch.detach()


def bench_trigger(b: Bench) -> dict:
    """(b) One DOORPING update on a trained-looking net; both must return the same patch."""
    s = b.scale
    # stop_loss 0: every update runs max_steps, so both paths do the same number of Adam steps
    cfg = b.config(f"doorping.max_steps={s.trigger_steps}", "doorping.stop_loss=0", "poison.clip=false")
    net = b.net(s.width)
    attacks = [cls(cfg, b.train, b.generator()) for cls in (AuthorsDoorping, DoorpingAttack)]
    start = attacks[0].trigger.clone()

    def update(attack: DoorpingAttack) -> Callable[[], None]:
        def run() -> None:
            attack.trigger = start.clone()
            net.eval()
            attack.update_trigger(net)

        return run

    result = compare(update(attacks[0]), in_retained_heap(update(attacks[1])), s.repeats, b.device)
    update(attacks[0])()
    update(attacks[1])()
    result["check"] = {
        "pattern_max_abs_diff": float((attacks[0].trigger.pattern - attacks[1].trigger.pattern).abs().max()),
        "steps_per_update": attacks[1].steps_total / max(attacks[1].updates, 1),
    }
    result["setting"] = {"width": s.width, "max_steps": s.trigger_steps}
    if b.device.type == "cuda":  # the fast path's steps run as CUDA graphs: against its own eager steps
        eager = DoorpingAttack(cfg, b.train, b.generator())
        eager.graphs_usable = False
        result["graphs_vs_eager"] = compare(update(eager), update(attacks[1]), s.repeats, b.device)
        update(eager)()
        update(attacks[1])()
        result["graphs_vs_eager"]["check"] = {
            "graphs_used": attacks[1].graphs_usable,
            "pattern_max_abs_diff": float((eager.trigger.pattern - attacks[1].trigger.pattern).abs().max()),
        }
    return result
