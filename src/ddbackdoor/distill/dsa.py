"""DSA: gradient matching with differentiable siamese augmentation (Zhao & Bilen, ICML 2021).

DC's loop with three changes, as in the authors' `main.py --method DSA`:
- per class, the real and the synthetic batch get the same random transform
  (one draw per class and outer step) before their gradients are matched;
- the inner loop trains the network on per-image augmented synthetic batches;
- victims train with per-image augmentation too (the authors evaluate DSA sets
  for 1000 epochs instead of 300; the `paper` profile sets `eval.epochs`).

Defaults: the authors' argparse defaults are DC's (lr_img 0.1, momentum 0.5,
batch_real 256, batch_train 256, init noise), but every DSA command in their
README passes `--init real`, so the `dsa` profiles set `dc.init=real`; that is
the one difference from DC's defaults. The `dc` section configures DSA as well.

DSA always runs the per-class matching loop: `dc.matching=batched` is refused,
since DC's vmap path draws no transforms (augmenting there would mean one draw
per class before stacking, which DC does not expose).
"""

from __future__ import annotations

from functools import partial

import torch

from ..errors import ConfigError
from .augment import DiffAugment
from .base import VictimTrainer
from .dc import DCDistiller
from .pool import RealPool


def augmented_victim_trainer(augment: DiffAugment) -> VictimTrainer:
    """Plain victim SGD on per-image augmented batches, as DSA and DM evaluate."""
    from ..evaluate import train_victim  # evaluate imports this package: bind it at call time

    return partial(train_victim, augment=augment)


class DSADistiller(DCDistiller):
    """DC plus siamese augmentation in matching, augmentation in the inner loop and for victims."""

    name = "dsa"
    description = "DSA (Zhao & Bilen 2021): DC with differentiable siamese augmentation"
    sections = ("dc", "dsa")

    def configure(self) -> None:
        super().configure()
        config = self.config
        if config.dc.matching == "batched":
            raise ConfigError(
                "dc.matching=batched is not available with distill=dsa (DSA augments each class "
                "in the per-class loop); drop the override or set dc.matching=loop"
            )
        self.augment = DiffAugment(config.dsa.strategy)

    def augment_pair(
        self, real: torch.Tensor, syn: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        transform = self.augment.sample(generator, real.shape[-2:])
        return transform(real), transform(syn)

    def can_batch(self, pool: RealPool) -> bool:
        return False

    def victim_trainer(self) -> VictimTrainer:
        return augmented_victim_trainer(self.augment)
