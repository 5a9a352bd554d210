"""MTT: dataset distillation by matching training trajectories (Cazenavette et al., CVPR 2022).

Experts first: `mtt.num_experts` networks train on the (possibly poisoned) real data with plain
SGD (`mtt.lr_teacher`, no momentum or weight decay, batch `mtt.batch_train`) for
`mtt.expert_epochs_total` epochs, their weights kept after every epoch. The trajectories are
written once to RUN/experts.safetensors with their config, and read back when the run resumes.
Then every iteration picks an expert and a start epoch s < `mtt.max_start_epoch`, starts a
student at the expert's weights at s, trains it `mtt.syn_steps` plain SGD steps on the
synthetic images with the learned step size (`torch.func.functional_call` over the flat
weights, graph kept), and minimises ||student - expert(s + M)||^2 / ||expert(s) - expert(s + M)||^2
with M = `mtt.expert_epochs`, over the images (SGD, momentum 0.5) and the step size (SGD,
momentum 0.5, `mtt.lr_lr`). Defaults are the MTT authors' CIFAR-10 IPC-10 row, without ZCA
whitening and without DSA augmentation (our simplifications, named in docs/beyond-the-paper.md).

Attacks: the experts train on the poisoned pool as `prepare` leaves it, so NAIVEATTACK reaches
MTT through them. DOORPING needs a network; `mtt.trigger_net` says which (`on_network`):
`target` (default), once per iteration, a network holding the target expert weights
expert(s + M), the weights the synthetic set is pulled towards; the experts are fixed once
trained, so these triggers never reach the data the set is matched to. `experts`: every expert
after each of its epochs, the pool re-stamped for the next epoch, as DOORPING does under DC, so
the trajectories learn the trigger as it moves; `both`. docs/beyond-the-paper.md measures the choice.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from ..artifacts import load_tensors, save_tensors
from ..errors import ArtifactError
from .base import (
    Distiller,
    HookContext,
    RealPool,
    SyntheticSet,
    VictimTrainer,
    call_hooks,
    init_synthetic,
    load_optimizer_tensors,
    optimizer_tensors,
)


def flat(params: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([p.reshape(-1) for p in params.values()])


def unflat(vector: torch.Tensor, like: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out, offset = {}, 0
    for name, p in like.items():
        out[name] = vector[offset : offset + p.numel()].view_as(p)
        offset += p.numel()
    return out


def train_expert(
    net: nn.Module,
    pool: RealPool,
    epochs: int,
    lr: float,
    batch: int,
    generator: torch.Generator,
    after_epoch: Callable[[nn.Module, int], None] = lambda net, epoch: None,
) -> torch.Tensor:
    """[epochs + 1, P] flat weights after 0..epochs epochs of plain SGD on the whole pool;
    `after_epoch` sees the network after each epoch (an attack may re-stamp the pool there)."""
    optimizer = torch.optim.SGD(net.parameters(), lr=lr)
    snapshots = [flat(dict(net.named_parameters())).detach().clone()]
    for epoch in range(1, epochs + 1):
        order = torch.randperm(pool.labels.numel(), generator=generator).to(pool.images.device)
        for start in range(0, order.numel(), batch):
            idx = order[start : start + batch]
            loss = F.cross_entropy(net(pool.images[idx]), pool.labels[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        snapshots.append(flat(dict(net.named_parameters())).detach().clone())
        after_epoch(net, epoch)
    return torch.stack(snapshots)


def trajectory_loss(
    net: nn.Module,
    start: torch.Tensor,
    target: torch.Tensor,
    images: torch.Tensor,
    labels: torch.Tensor,
    lr: torch.Tensor,
    steps: int,
) -> torch.Tensor:
    """||w_steps - target||^2 / ||start - target||^2, where w_0 = start and each step is plain SGD
    with step size `lr` on the whole synthetic batch; differentiable in images and lr."""
    like = {name: p for name, p in net.named_parameters()}
    buffers = dict(net.named_buffers())
    weights = start.clone().requires_grad_(True)
    for _ in range(steps):
        logits = functional_call(net, (unflat(weights, like), buffers), (images,))
        grad = torch.autograd.grad(F.cross_entropy(logits, labels), weights, create_graph=True)[0]
        weights = weights - lr * grad
    return ((weights - target) ** 2).sum() / ((start - target) ** 2).sum()


class MTTDistiller(Distiller):
    name = "mtt"
    description = "MTT (Cazenavette et al. 2022): matching segments of expert training trajectories"
    sections = ("mtt",)

    def expert_file(self):
        if self.workdir is None:
            return None
        return self.workdir / "experts.safetensors"

    def start(self, pool: RealPool, generator: torch.Generator, hooks: Sequence = ()) -> None:
        cfg = self.config.mtt
        images, self.labels = init_synthetic(pool, self.config.ipc, cfg.init, generator)
        self.trajectories = self.load_or_train_experts(pool, generator, hooks)
        self._make_state(images, torch.tensor(cfg.lr_teacher, device=images.device))

    def load_or_train_experts(
        self, pool: RealPool, generator: torch.Generator, hooks: Sequence = ()
    ) -> torch.Tensor:
        cfg = self.config.mtt
        path = self.expert_file()
        # a run stopped before its first checkpoint reuses its experts, unless an attack moved its
        # trigger while they trained: that trigger is not in the file, so they train again
        if path is not None and path.exists() and cfg.trigger_net == "target":
            trajectories, after = self.read_experts(path, pool.images.device)
            generator.set_state(after)  # as if they had just been trained: the same run, bit for bit
            return trajectories
        experts = []
        expert_hooks = list(hooks) if cfg.trigger_net in ("experts", "both") else []
        epochs = cfg.expert_epochs_total
        for number in range(cfg.num_experts):
            net = self.make_net()
            net.train()

            def after_epoch(net: nn.Module, epoch: int, first: int = number * epochs) -> None:
                call_hooks(expert_hooks, "on_network", net, HookContext(0, first + epoch))

            experts.append(
                train_expert(net, pool, epochs, cfg.lr_teacher, cfg.batch_train, generator, after_epoch)
            )
        trajectories = torch.stack(experts)
        if path is not None:
            tensors = {"trajectories": trajectories.cpu(), "generator_after": generator.get_state()}
            save_tensors(path, tensors, {"config": self.expert_config()})
        return trajectories

    def expert_config(self) -> dict:
        """What the experts depend on: their settings, the data, the network and the poisoning."""
        cfg = self.config.model_dump(mode="json")
        keys = ("seed", "dataset", "data", "network", "net", "attack", "poison", "mtt")
        return {key: cfg[key] for key in keys}

    def read_experts(self, path, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        tensors, meta = load_tensors(path)
        if meta.get("config") != self.expert_config():
            raise ArtifactError(f"{path} holds experts of another config; pass --restart to retrain them")
        return tensors["trajectories"].to(device), tensors["generator_after"]

    def _make_state(self, images: torch.Tensor, lr: torch.Tensor) -> None:
        cfg = self.config.mtt
        self.images = images.detach().clone().requires_grad_(True)
        self.syn_lr = lr.detach().clone().float().requires_grad_(True)
        self.optimizer_img = torch.optim.SGD([self.images], lr=cfg.lr_img, momentum=0.5)
        self.optimizer_lr = torch.optim.SGD([self.syn_lr], lr=cfg.lr_lr, momentum=0.5)

    def step(self, iteration: int, pool: RealPool, hooks: list, generator: torch.Generator) -> torch.Tensor:
        cfg = self.config.mtt
        expert = int(torch.randint(self.trajectories.shape[0], (1,), generator=generator))
        last_start = min(cfg.max_start_epoch, self.trajectories.shape[1] - 1 - cfg.expert_epochs)
        begin = int(torch.randint(last_start + 1, (1,), generator=generator))
        start = self.trajectories[expert, begin]
        target = self.trajectories[expert, begin + cfg.expert_epochs]
        net = self.make_net()
        net.train()
        loss = trajectory_loss(net, start, target, self.images, self.labels, self.syn_lr, cfg.syn_steps)
        self.optimizer_img.zero_grad(set_to_none=True)
        self.optimizer_lr.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer_img.step()
        self.optimizer_lr.step()
        with torch.no_grad():
            self.syn_lr.clamp_(min=1e-6)  # a step size must stay positive
            for name, p in unflat(target, dict(net.named_parameters())).items():
                net.get_parameter(name).copy_(p)
        if cfg.trigger_net in ("target", "both"):
            call_hooks(hooks, "on_network", net, HookContext(iteration))
        return loss.detach()

    def synthetic(self) -> SyntheticSet:
        return SyntheticSet(self.images.detach(), self.labels, self.syn_lr.detach().reshape(1))

    def state_tensors(self) -> dict[str, torch.Tensor]:
        tensors = {"images": self.images.detach(), "labels": self.labels, "syn_lr": self.syn_lr.detach()}
        tensors.update(optimizer_tensors(self.optimizer_img, "optimizer_img"))
        tensors.update(optimizer_tensors(self.optimizer_lr, "optimizer_lr"))
        return tensors

    def load_state_tensors(self, tensors: dict[str, torch.Tensor], device: torch.device) -> None:
        path = self.expert_file()
        if path is None or not path.exists():
            raise ArtifactError("the MTT experts file is missing from the run directory; pass --restart")
        self.trajectories, _ = self.read_experts(path, device)
        self.labels = tensors["labels"].to(device)
        self._make_state(tensors["images"].to(device), tensors["syn_lr"].to(device))
        moved = {k: v.to(device) for k, v in tensors.items()}
        load_optimizer_tensors(self.optimizer_img, moved, "optimizer_img")
        load_optimizer_tensors(self.optimizer_lr, moved, "optimizer_lr")

    def victim_trainer(self) -> VictimTrainer:
        """Victims train with the learned step size as their learning rate (MTT's evaluation)."""
        from ..evaluate import train_victim

        def train(net: nn.Module, synthetic: SyntheticSet, cfg, generator: torch.Generator) -> nn.Module:
            lr = float(synthetic.lrs.reshape(-1)[0]) if synthetic.lrs is not None else cfg.lr
            return train_victim(net, synthetic, cfg.model_copy(update={"lr": lr}), generator)

        return train
