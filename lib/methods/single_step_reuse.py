"""p3 — Liu, Khalil, Khreishah: single-step adversarial training that reuses each example's perturbation across
epochs, and ATDA, the algorithm only.

:class:`StoredPerturbation` keeps one perturbation per training example; each epoch it takes one signed gradient
step from where it was and is projected back to the eps-ball, and every ``reset_every`` epochs all return to
zero. :class:`ATDASource` (Song et al., the paper's ATDA baseline) adds domain-adaptation losses between clean
and adversarial logits to FGSM training. Both are training sources of :func:`lib.train.train`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lib import attacks as A
from lib.attacks import threat
from lib.attacks.common import eval_mode, loss_grad
from lib.errors import require
from lib.train import (
    AttackSource,
    Clean,
)


class StoredPerturbation(Clean):
    """Per-example perturbations carried across epochs: one signed step per example per epoch.

    Each epoch an example's stored delta takes one step of ``step_size`` along the sign of the
    loss gradient at ``x + delta`` and is projected to the L∞ ``eps``-ball and [0, 1]; every
    ``reset_every`` epochs all deltas return to zero (Liu, Khalil, Khreishah).
    """

    def __init__(
        self,
        num_examples: int,
        example_shape: tuple,
        eps: float,
        step_size: float,
        reset_every: int,
        norm: str = "linf",
    ):
        require(eps >= 0 and step_size >= 0, "eps and step_size must be >= 0")
        require(reset_every >= 1, f"reset_every must be >= 1, got {reset_every}")
        self.delta = torch.zeros(num_examples, *example_shape)
        self.eps, self.step_size, self.reset_every = eps, step_size, reset_every
        self.ball = threat(norm)

    def start_epoch(self, epoch: int) -> None:
        if epoch % self.reset_every == 0:
            self.delta.zero_()

    def __call__(self, model, x, y, idx):
        if self.delta.device != x.device:  # the GPU path batches by index on the device
            self.delta = self.delta.to(x.device)
        start = x + self.delta[idx.to(self.delta.device)]
        with eval_mode(model):
            x_adv = self.ball.project(self.ball.step(start, loss_grad(model, start, y), self.step_size), x, self.eps)
        self.delta[idx.to(self.delta.device)] = (x_adv - x).detach()
        return x_adv.detach()


class ATDASource(AttackSource):
    """ATDA (Song et al. 2019): FGSM adversarial training plus domain adaptation on the logits.

    Unsupervised: CORAL (covariance) + mean alignment between clean and adversarial logits, both
    L1 and divided by the class count. Supervised: a margin loss pulling each logit vector (clean
    and adversarial) to its class centre and away from the nearest other centre (L1 distances);
    centres are a running mean of clean logits. Weights and margin are parameters (our choice
    where the papers leave them open).
    """

    needs_clean_logits = True

    def __init__(
        self, eps: float, num_classes: int, lambda_uda: float, lambda_sda: float, margin: float, momentum: float
    ):
        super().__init__(A.fgsm, eps=eps)
        self.lambda_uda, self.lambda_sda, self.margin, self.momentum = lambda_uda, lambda_sda, margin, momentum
        self.centers: torch.Tensor | None = None
        self.k = num_classes

    def _update_centers(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        onehot = F.one_hot(y, self.k).float()
        counts = onehot.sum(0)
        means = (onehot.T @ logits.detach()) / counts.clamp(min=1)[:, None]
        if self.centers is None:
            self.centers = means
        present = (counts > 0)[:, None]
        self.centers = torch.where(present, self.momentum * self.centers + (1 - self.momentum) * means, self.centers)
        return self.centers

    def extra_loss(self, logits_clean, logits_adv, y):
        def cov(z):
            zc = z - z.mean(0, keepdim=True)
            return zc.T @ zc / max(len(z) - 1, 1)

        uda = (
            (cov(logits_clean) - cov(logits_adv)).abs().sum() + (logits_clean.mean(0) - logits_adv.mean(0)).abs().sum()
        ) / self.k
        centers = self._update_centers(logits_clean, y)
        z = torch.cat([logits_clean, logits_adv])
        yy = torch.cat([y, y])
        dist = torch.cdist(z, centers, p=1)  # [2N, k]
        own = dist.gather(1, yy[:, None]).squeeze(1)
        other = dist.scatter(1, yy[:, None], float("inf")).amin(1)
        sda = (own - other + self.margin).clamp(min=0).mean()
        return self.lambda_uda * uda + self.lambda_sda * sda
