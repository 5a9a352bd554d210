"""KIP: kernel inducing points (Nguyen, Chen & Lee, ICLR 2021), as Chung et al. (ICLR 2024) use it
to study backdoors in distillation.

The synthetic set is the support of a kernel ridge regression with the infinite-width NTK of a
fully-connected ReLU network (`distill.ntk`). Each iteration draws a real batch (`kip.batch_real`
images per class), predicts its labels by KRR on the synthetic set, and takes an Adam step on
the synthetic images against the squared error to the real batch's one-hot labels (centred, as
KIP's labels are). No network is trained, so attacks that read a network (DOORPING, INVISIBLE,
TARGETPATCH) get none and fall back to their first trigger; NAIVEATTACK and the kernel-aware
relax-trigger poison the real pool as usual. Victims train as usual (plain SGD); the `quick`
profile evaluates the fully-connected network the kernel describes (`network=mlp`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import ImageSGDDistiller
from .ntk import kernel_ridge_predict, relu_ntk
from .pool import RealPool


def centred_one_hot(labels: torch.Tensor, classes: int) -> torch.Tensor:
    return F.one_hot(labels, classes).float() - 1.0 / classes


class KIPDistiller(ImageSGDDistiller):
    name = "kip"
    description = "KIP (Nguyen et al. 2021): kernel ridge regression under a ReLU MLP's NTK"
    sections = ("kip",)

    def image_settings(self) -> tuple[str, float, float]:
        return self.config.kip.init, self.config.kip.lr_img, 0.0

    def _make_images(self, images: torch.Tensor) -> None:
        self.images = images.detach().clone().requires_grad_(True)
        self.optimizer_img = torch.optim.Adam([self.images], lr=self.config.kip.lr_img)

    def kernel(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        return relu_ntk(x1, x2, depth=self.config.kip.depth)

    def loss(self, real: torch.Tensor, labels: torch.Tensor, classes: int) -> torch.Tensor:
        """Mean squared error of the KRR predictions on a real batch (per image and class)."""
        support_labels = centred_one_hot(self.labels, classes)
        predicted = kernel_ridge_predict(
            self.kernel(real, self.images),
            self.kernel(self.images, self.images),
            support_labels,
            self.config.kip.reg,
        )
        return F.mse_loss(predicted, centred_one_hot(labels, classes))

    def step(self, iteration: int, pool: RealPool, hooks: list, generator: torch.Generator) -> torch.Tensor:
        per_class = [pool.sample(c, self.config.kip.batch_real, generator) for c in range(pool.num_classes)]
        real = torch.cat(per_class)
        labels = torch.cat(
            [torch.full((x.shape[0],), c, device=real.device) for c, x in enumerate(per_class)]
        )
        loss = self.loss(real, labels, pool.num_classes)
        self.optimizer_img.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer_img.step()
        return loss.detach()
