"""Train the N victims of an evaluation together: stacked parameters, one vmap'd forward.

Training ten small networks one after another spends most of its time in
Python and in small kernels. Stacking their parameters along a leading axis
(`torch.func.stack_module_state`) and running one `vmap(functional_call)` per
mini-batch does the same arithmetic in one set of (grouped) kernels.

Exactness: every victim keeps its own initial weights (built by the caller
under its own seed) and its own `torch.Generator`, from which its batch order
is drawn exactly as `dc.train_epochs` draws it; SGD is elementwise, so one
`torch.optim.SGD` over the stacked tensors applies to each victim precisely
the update its own optimiser would. The result equals the sequential path up
to float rounding. Networks whose training is not independent per sample
and per victim (BatchNorm statistics, dropout's global RNG) are refused by
`can_stack`, and the caller trains them one by one.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from .config import EvalConfig
from .transfer import to_device

# Modules whose training-mode output depends on more than one sample's own input and the weights.
_NOT_STACKABLE = (nn.modules.batchnorm._BatchNorm, nn.Dropout, nn.Dropout2d, nn.AlphaDropout)


def can_stack(nets: list[nn.Module]) -> bool:
    """Same architecture, no BatchNorm/dropout: stacked training is then exact."""
    if len(nets) < 2:
        return False
    shapes = [[(k, tuple(v.shape)) for k, v in net.state_dict().items()] for net in nets]
    same = all(s == shapes[0] for s in shapes[1:]) and len({type(n) for n in nets}) == 1
    return same and not any(isinstance(m, _NOT_STACKABLE) for m in nets[0].modules())


class StackedVictims:
    """N networks of one architecture as stacked tensors plus a stateless template."""

    def __init__(self, nets: list[nn.Module]):
        self.count = len(nets)
        self.params, self.buffers = stack_module_state(nets)
        self.template = copy.deepcopy(nets[0]).to("meta")
        for p in self.params.values():
            p.requires_grad_(True)

    def logits(self, images: torch.Tensor, shared_input: bool = False) -> torch.Tensor:
        """[N, B, classes]; images are [N, B, ...] per victim, or [B, ...] for all when shared."""

        def one(params: dict, buffers: dict, x: torch.Tensor) -> torch.Tensor:
            return functional_call(self.template, (params, buffers), (x,))

        in_dims = (0, 0, None if shared_input else 0)
        return vmap(one, in_dims=in_dims)(self.params, self.buffers, images)


def _epoch_order(generators: list[torch.Generator], n: int, device: torch.device) -> torch.Tensor:
    """[N, n]: each victim's permutation, drawn from its own generator as train_epochs does."""
    return to_device(torch.stack([torch.randperm(n, generator=g) for g in generators]), device)


def train_stacked(
    stacked: StackedVictims,
    images: torch.Tensor,
    labels: torch.Tensor,
    cfg: EvalConfig,
    generators: list[torch.Generator],
) -> StackedVictims:
    """The protocol of `evaluate.train_victim` (SGD, momentum, weight decay, lr x0.1 at half)."""
    params = list(stacked.params.values())
    optimizer = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    half = cfg.epochs // 2
    images, n = images.detach(), images.shape[0]
    for phase_epochs, lr in ((half, cfg.lr), (cfg.epochs - half, cfg.lr * 0.1)):
        for group in optimizer.param_groups:
            group["lr"] = lr
        for _ in range(phase_epochs):
            order = _epoch_order(generators, n, images.device)
            for start in range(0, n, cfg.batch):
                idx = order[:, start : start + cfg.batch]
                logits = stacked.logits(images[idx])
                # sum over victims of each victim's mean loss: victim i's gradient is its own
                loss = F.cross_entropy(logits.flatten(0, 1), labels[idx].flatten(), reduction="none")
                loss = loss.view(idx.shape).mean(dim=1).sum()
                grads = torch.autograd.grad(loss, params)
                for p, g in zip(params, grads, strict=True):
                    p.grad = g
                optimizer.step()
    return stacked


@torch.inference_mode()
def predict_stacked(stacked: StackedVictims, images: torch.Tensor, batch: int) -> torch.Tensor:
    """[N, len(images)] predicted classes; chunks keep activation memory that of one victim's batch."""
    chunk = max(1, batch // stacked.count)
    preds = [
        stacked.logits(images[i : i + chunk], shared_input=True).argmax(dim=-1)
        for i in range(0, images.shape[0], chunk)
    ]
    return torch.cat(preds, dim=1)
