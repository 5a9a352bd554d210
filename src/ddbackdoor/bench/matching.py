"""(a) one gradient-matching outer step: per-class loop vs the fast path."""

from __future__ import annotations

import copy

import torch
from torch import nn

from ..distill.dc import DCDistiller
from ..distill.pool import RealPool
from .measure import (
    compare,
    relative,
)
from .setup import STRAIGHTFORWARD, Bench, fast_dc_options, in_retained_heap


# -- sections ------------------------------------------------------------------------------------------
def bench_matching(b: Bench) -> dict:
    """(a) One outer step of gradient matching at IPC 10; loss and image gradient must agree."""
    s, pool = b.scale, b.pool()
    net = b.net(s.width)
    common = ["ipc=10", f"dc.batch_real={s.batch_real}"]
    loop = DCDistiller(b.config(*common, *STRAIGHTFORWARD), lambda: net, progress=False)
    fast = DCDistiller(
        b.config(*common, *fast_dc_options(b.device, b.reproducible)), lambda: net, progress=False
    )
    for dc in (loop, fast):
        dc.start(pool, b.generator())
    result = compare(
        lambda: loop.matching_step(net, pool, b.generator()),
        in_retained_heap(lambda: fast.matching_step(net, pool, b.generator())),
        s.repeats,
        b.device,
    )
    loss_loop, grad_loop = matching_loss_and_grad(loop, net, pool, loop.images, b.generator())
    loss_fast, grad_fast = matching_loss_and_grad(fast, net, pool, loop.images, b.generator())
    # float64 reference (the loop's arithmetic in double precision): on a GPU the two fp32 paths
    # run different convolution kernels, so their distance alone cannot say which one drifted
    pool64 = RealPool(pool.images.double(), pool.labels, pool.num_classes)
    net64 = copy.deepcopy(net).double()
    loss_ref, grad_ref = matching_loss_and_grad(loop, net64, pool64, loop.images.double(), b.generator())
    check = {
        "loss_relative_diff": relative(loss_fast, loss_loop),
        "grad_relative_diff": relative(grad_fast, grad_loop),
        "loop_grad_vs_float64": relative(grad_loop, grad_ref),
        "fast_grad_vs_float64": relative(grad_fast, grad_ref),
    }
    check["within_1e-4"] = check["loss_relative_diff"] < 1e-4 and check["grad_relative_diff"] < 1e-4
    # agreement in the sense that matters: the fast path is no further from float64 than the loop
    check["fast_as_accurate_as_loop"] = (
        check["fast_grad_vs_float64"] <= 2 * check["loop_grad_vs_float64"] + 1e-6
    )
    result["check"] = check
    result["setting"] = {"width": s.width, "batch_real": s.batch_real, "ipc": 10}
    return result


def matching_loss_and_grad(
    dc: DCDistiller, net: nn.Module, pool: RealPool, images: torch.Tensor, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """The summed matching loss over classes and its gradient w.r.t. the images, by `dc`'s path."""
    images = images.detach().clone().requires_grad_(True)
    if dc.config.dc.matching == "batched":
        loss = dc.matching_loss_batched(net, pool, images, generator)
    else:
        loss = sum(dc.class_matching_loss(net, pool, images, c, generator) for c in range(pool.num_classes))
    (grad,) = torch.autograd.grad(loss, images)
    return loss.detach(), grad
