"""(e) one DD outer step: a module rebuilt per unrolled step vs functional_call."""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F

from .measure import (
    compare,
    relative,
)
from .setup import Bench
from .stacking import load_into


def bench_dd(b: Bench) -> dict:
    """(e) One DD outer step: unroll, outer loss on a real batch, backward to images and lrs."""
    try:
        from ..distill import dd
    except ImportError:
        return {"missing": "ddbackdoor.distill.dd does not exist yet"}
    s, pool = b.scale, b.pool()
    cfg = b.config(
        "distill=dd", "ipc=10", f"dd.distill_steps={s.dd_steps}", f"dd.distill_epochs={s.dd_epochs}"
    )
    distiller = dd.DDDistiller(cfg, lambda: b.net(s.dd_width, norm="none"), progress=False)
    distiller.start(pool, b.generator())
    template = b.net(s.dd_width, norm="none")
    real_index = torch.randperm(pool.labels.numel(), generator=b.generator())[: s.dd_batch_real]
    real_x, real_y = pool.images[real_index.to(b.device)], pool.labels[real_index.to(b.device)]
    buffers = dict(template.named_buffers())

    def outer_step(rebuild: bool) -> tuple[torch.Tensor, torch.Tensor]:
        images = distiller.images.detach().clone().requires_grad_(True)
        batches = distiller.layout.batches(images, distiller.labels)
        lrs = distiller.lrs().detach()
        weights = {k: v.detach().clone().requires_grad_(True) for k, v in template.named_parameters()}
        if rebuild:
            end = dict(weights)
            for t in range(lrs.numel()):
                x, y = batches[t % len(batches)]
                module = load_into(copy.deepcopy(template), end)
                grads = torch.autograd.grad(
                    F.cross_entropy(module(x), y), list(end.values()), create_graph=True
                )
                end = {k: w - lrs[t] * g for (k, w), g in zip(end.items(), grads, strict=True)}
            logits = load_into(copy.deepcopy(template), end)(real_x)
        else:
            end = dd.unroll(template, weights, buffers, batches, lrs)
            logits = torch.func.functional_call(template, (end, buffers), (real_x,))
        loss = F.cross_entropy(logits, real_y)
        (grad,) = torch.autograd.grad(loss, images)
        return loss.detach(), grad

    result = compare(lambda: outer_step(True), lambda: outer_step(False), s.repeats, b.device)
    (loss_a, grad_a), (loss_b, grad_b) = outer_step(True), outer_step(False)
    result["check"] = {
        "loss_relative_diff": relative(loss_b, loss_a),
        "grad_relative_diff": relative(grad_b, grad_a),
    }
    result["setting"] = {"width": s.dd_width, "unrolled_steps": s.dd_steps * s.dd_epochs, "ipc": 10}
    return result
