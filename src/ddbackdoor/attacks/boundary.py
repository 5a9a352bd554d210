"""InkDrop and SNEAKDOOR: poisons near the decision boundary, each with its own learned change.

Both releases (lvdongyi/InkDrop, XJTU-AI-Lab/SneakDoor) run one pipeline, read there and written
anew here; they differ in the generator's loss:

1. A surrogate (the victims' architecture) trains on the clean training set (10 epochs, SGD lr
   0.001). Its confusion matrix on that set names the source class: the class most often taken
   for the target (the releases' rule when a target is given; `source` overrides it).
2. The source class's images with the highest target logit (top `pool_share`, 20%) are the pool;
   `train_share` (70%) of it, at random, is the poison set, the rest held out. The golden set is
   the `golden` (256) correctly classified target images with the highest target logit.
3. A generator G writes each image's change, x_n' = x_n + clamp(G(x_n), -eps, eps) in normalised
   units (eps 0.5: 0.5 std per channel), trained with Adam (lr 0.001, batches of 256) for
   ceil(`budget` / poison images) epochs on the poison set, the surrogate frozen. Its loss:
   - contrastive (tau 0.2): each poisoned embedding u_i towards a random golden image's p_i, away
     from the batch's clean embeddings c_j: -mean_i log(exp(u_i.p_i / tau) / sum_j exp(u_i.c_j / tau))
     (as in the releases, the positive is not in the denominator);
   - EMD: the L1 distance of the cumulative softmax of the poisoned image and of its golden image;
   - L2: mean(delta^2), normalised units; perceptual: 1 - SSIM of poisoned vs clean (the releases
     use LPIPS, whose AlexNet weights must be downloaded: our substitute, named in the docs).
   InkDrop's release (its final commit) weights the contrastive term alone (0.65); SNEAKDOOR's
   2.25 EMD + 0.65 contrastive + 1.25 L2 + 1.25 LPIPS.
4. The poisoned source images join the target class (dirty label) and make up `attack_rate` (5%) of
   every real batch the distiller draws of it; the synthetic set starts from clean images (with
   `paired`, as the clean run of the seed). The releases distil the target class again and splice
   it into the clean set; with DM's per-class loss and paired streams that is what happens here.

Neither release clips x + delta to [0, 1] (their clipper returns its input): `clip=false` is that;
`clip=true` keeps every pixel valid. What ours changes: the generator is our own small
encoder-decoder (ddbackdoor.generated_trigger), the embedding is DM's (the classifier's input),
and ASR is scored on test images like every attack (the releases score held-out training images
of the source class; the source-class ASR is `eval.source_class`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..config import BoundaryConfig
from ..distill.dm import capture_input, classifier_layer
from ..distill.pool import RealPool
from ..errors import DataError
from ..generated_trigger import GeneratedTrigger, PerturbationNet
from ..stealth import ssim
from ..triggers import Trigger
from .base import PatchAttack, own_network

SURROGATE_BATCH = 256
GENERATOR_PREFIX = "generator."


def embed_and_logits(net: nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The classifier's input (DM's embedding) and the logits, from one forward."""
    with capture_input(classifier_layer(net)) as store:
        logits = net(images)
    return store["in"].flatten(1), logits


def contrastive_loss(
    poisoned: torch.Tensor, positive: torch.Tensor, clean: torch.Tensor, tau: float
) -> torch.Tensor:
    u, p, c = (F.normalize(x, dim=1) for x in (poisoned, positive, clean))
    return -((u * p).sum(1) / tau - torch.logsumexp(u @ c.T / tau, dim=1)).mean()


def emd_loss(logits: torch.Tensor, reference_logits: torch.Tensor) -> torch.Tensor:
    """Mean over images of sum_k |CDF_k(softmax) - CDF_k(softmax of the reference)| (1-D Wasserstein
    over the class index, as the releases compute it)."""
    cdf = torch.cumsum(F.softmax(logits, 1), 1)
    reference = torch.cumsum(F.softmax(reference_logits, 1), 1)
    return (cdf - reference).abs().sum(1).mean()


class BoundaryAttack(PatchAttack):
    """The shared pipeline; a subclass names itself and its config section."""

    sections = ("poison",)

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.facts: dict = {}

    @property
    def settings(self) -> BoundaryConfig:
        """This attack's section (`inkdrop.*` or `sneakdoor.*`)."""
        return getattr(self.config, self.name)

    def initial_trigger(self) -> Trigger:
        """A placeholder until `prepare` trains the generator (evaluation never sees it)."""
        size, channels = self.train.image_size, self.train.channels
        return Trigger(
            torch.zeros(channels, size, size), torch.ones(1, size, size), self.config.poison.target
        )

    # -- the pipeline -------------------------------------------------------------------------
    def prepare(self, pool: RealPool) -> None:
        device = pool.images.device
        target = self.config.poison.target
        surrogate = self.train_surrogate(device)
        logits = self.logits_of(surrogate, self.train.images, device)
        source = self.choose_source(logits.argmax(1), target)
        poison_rows, held_rows = self.boundary_pool(logits, source, target)
        golden = self.golden_images(logits, target)
        self.trigger = self.train_generator(surrogate, poison_rows, golden, device)
        self.poison_index = poison_rows.to(device)
        self.originals = self.train.images[poison_rows].to(device)
        pool.labels[self.poison_index] = target
        pool.reindex()
        self.restamp(pool)
        pool.mix(target, self.poison_index, self.settings.attack_rate)
        pool.start_excluded = self.poison_index  # the releases start from clean images only
        self.facts.update(
            {
                "source": source,
                "boundary_pool": int(poison_rows.numel() + held_rows.numel()),
                "golden": int(golden.shape[0]),
                "surrogate_train_accuracy": float((logits.argmax(1) == self.train.labels).float().mean()),
                "surrogate_heldout_success": self.surrogate_success(surrogate, held_rows, target, device),
            }
        )

    def train_surrogate(self, device: torch.device) -> nn.Module:
        """The victims' architecture, trained on the clean training set (no augmentation)."""
        cfg, data = self.settings, self.train
        net = self.victims_architecture(device)
        optimizer = torch.optim.SGD(net.parameters(), lr=cfg.surrogate_lr, momentum=0.9, weight_decay=5e-4)
        net.train()
        for _ in range(cfg.surrogate_epochs):
            order = torch.randperm(len(data.labels), generator=self.generator)
            for rows in order.split(SURROGATE_BATCH):
                images = data.normalize(data.images[rows]).to(device)
                loss = F.cross_entropy(net(images), data.labels[rows].to(device))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
        net.eval()
        net.requires_grad_(False)
        return net

    def logits_of(self, net: nn.Module, pixels: torch.Tensor, device: torch.device) -> torch.Tensor:
        with torch.no_grad():
            parts = [net(self.train.normalize(chunk).to(device)).cpu() for chunk in pixels.split(1024)]
        return torch.cat(parts)

    def choose_source(self, predicted: torch.Tensor, target: int) -> int:
        if self.settings.source is not None:
            if self.settings.source == target or self.settings.source >= self.train.num_classes:
                raise DataError(
                    f"{self.name}.source={self.settings.source} must be a class other than the target "
                    f"({target}) below {self.train.num_classes}"
                )
            return self.settings.source
        taken = torch.zeros(self.train.num_classes)
        taken.index_add_(
            0, self.train.labels[predicted == target], torch.ones(int((predicted == target).sum()))
        )
        taken[target] = -1  # the class most often taken for the target, never the target itself
        return int(taken.argmax())

    def boundary_pool(
        self, logits: torch.Tensor, source: int, target: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The source images with the highest target logit, split at random into poison and held-out rows."""
        cfg = self.settings
        rows = torch.nonzero(self.train.labels == source).flatten()
        ranked = rows[logits[rows, target].argsort(descending=True)]
        pool = ranked[: max(1, int(len(rows) * cfg.pool_share))]
        pool = pool[torch.randperm(len(pool), generator=self.generator)]
        cut = max(1, int(len(pool) * cfg.train_share))
        return pool[:cut], pool[cut:]

    def golden_images(self, logits: torch.Tensor, target: int) -> torch.Tensor:
        """The target images the surrogate gets right, by target logit; a surrogate that gets none
        right (a few epochs on a tiny network) falls back on all the target's images, and says so."""
        of_target = self.train.labels == target
        rows = torch.nonzero(of_target & (logits.argmax(1) == target)).flatten()
        self.facts["golden_correct"] = int(rows.numel())
        if rows.numel() == 0:
            rows = torch.nonzero(of_target).flatten()
        ranked = rows[logits[rows, target].argsort(descending=True)][: self.settings.golden]
        return self.train.images[ranked]

    def train_generator(
        self, surrogate: nn.Module, poison_rows: torch.Tensor, golden: torch.Tensor, device: torch.device
    ) -> GeneratedTrigger:
        cfg, data = self.settings, self.train
        width = cfg.generator_width
        net = own_network(lambda: PerturbationNet(data.channels, width).to(device), self.generator)
        trigger = GeneratedTrigger(
            torch.zeros(data.channels, data.image_size, data.image_size),
            torch.ones(1, data.image_size, data.image_size),
            self.config.poison.target,
            cfg.clip,
            True,
            1.0,
            net,
            cfg.epsilon,
            tuple(data.mean),
            tuple(data.std),
        )
        golden_n = data.normalize(golden).to(device)
        with torch.no_grad():
            golden_embed, golden_logits = embed_and_logits(surrogate, golden_n)
        optimizer = torch.optim.Adam(net.parameters(), lr=cfg.lr)
        images = data.images[poison_rows].to(device)
        epochs = math.ceil(cfg.budget / len(poison_rows))
        losses = []
        net.train()
        for _ in range(epochs):
            order = torch.randperm(len(images), generator=self.generator).to(device)
            for rows in order.split(cfg.batch):
                loss = self.generator_loss(trigger, surrogate, images[rows], golden_embed, golden_logits)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                losses.append(float(loss.detach()))
        net.eval()
        example = trigger.changes(images[:1])[0].cpu()
        self.facts.update(
            {"generator_epochs": epochs, "generator_loss_first": losses[0], "generator_loss_last": losses[-1]}
        )
        return trigger.with_pattern(example)

    def generator_loss(
        self,
        trigger: GeneratedTrigger,
        surrogate: nn.Module,
        clean: torch.Tensor,
        golden_embed: torch.Tensor,
        golden_logits: torch.Tensor,
    ) -> torch.Tensor:
        cfg, data = self.settings, self.train
        change = trigger.change(clean)
        poisoned = clean + change
        if cfg.clip:
            poisoned = poisoned.clamp(0, 1)
        pick = torch.randint(len(golden_embed), (len(clean),), generator=self.generator).to(clean.device)
        embed, logits = embed_and_logits(surrogate, data.normalize(poisoned))
        loss = torch.zeros((), device=clean.device)
        if cfg.contrastive > 0:
            with torch.no_grad():
                clean_embed, _ = embed_and_logits(surrogate, data.normalize(clean))
            loss = loss + cfg.contrastive * contrastive_loss(embed, golden_embed[pick], clean_embed, cfg.tau)
        if cfg.emd > 0:
            loss = loss + cfg.emd * emd_loss(logits, golden_logits[pick])
        if cfg.l2 > 0:
            std = torch.tensor(data.std, device=clean.device).view(1, -1, 1, 1)
            loss = loss + cfg.l2 * ((change / std) ** 2).mean()
        if cfg.perceptual > 0:
            loss = loss + cfg.perceptual * (1 - ssim(poisoned.clamp(0, 1), clean)).mean().float()
        return loss

    def surrogate_success(
        self, surrogate: nn.Module, rows: torch.Tensor, target: int, device: torch.device
    ) -> float:
        """Share of the held-out boundary images the surrogate sends to the target once triggered."""
        if rows.numel() == 0:
            return float("nan")
        stamped = self.trigger.to(device).stamp(self.train.images[rows].to(device))
        logits = self.logits_of(surrogate, stamped.cpu(), device)
        return float((logits.argmax(1) == target).float().mean())

    # -- checkpoints: the trigger is a network --------------------------------------------------
    def state(self) -> tuple[dict[str, torch.Tensor], dict]:
        tensors, meta = super().state()
        assert isinstance(self.trigger, GeneratedTrigger) and self.trigger.generator is not None
        weights = {GENERATOR_PREFIX + k: v for k, v in self.trigger.generator.state_dict().items()}
        return {**tensors, **weights}, meta

    def load_state(self, tensors: dict[str, torch.Tensor], meta: dict, pool: RealPool) -> None:
        assert isinstance(self.trigger, GeneratedTrigger) and self.trigger.generator is not None
        weights = {
            k.removeprefix(GENERATOR_PREFIX): v for k, v in tensors.items() if k.startswith(GENERATOR_PREFIX)
        }
        self.trigger.generator.load_state_dict(weights)
        super().load_state(tensors, meta, pool)

    def summary(self) -> dict:
        return {**super().summary(), **self.facts}


class InkDropAttack(BoundaryAttack):
    """InkDrop (Yang, Lv, Ma et al. 2026): boundary poisons with a learned, bounded change."""

    name = "inkdrop"
    description = "InkDrop (Yang et al. 2026): source-class boundary images with a learned bounded change"
    sections = ("poison", "inkdrop")


class SneakdoorAttack(BoundaryAttack):
    """SNEAKDOOR (Yang et al., NeurIPS 2025): InkDrop's pipeline with EMD, L2 and perceptual terms."""

    name = "sneakdoor"
    description = (
        "SNEAKDOOR (Yang et al. 2025): boundary poisons, generator with EMD, L2 and perceptual terms"
    )
    sections = ("poison", "sneakdoor")
