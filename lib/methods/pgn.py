"""p2 — Perturbation generator networks (PGN, ICLR-2020 submission): the generator and its minimax step.

G(grad, x, y; phi) maps the one-hot label, the image and the gradient image grad_x F(x)_y (of the
true-label probability) to a perturbation in tanh space (Carlini-Wagner's box trick):
x_adv = (tanh(atanh(2x - 1) + G) + 1) / 2. The classifier descends CE(F(x_adv), y); G ascends
CE(F(x_adv), y) - c_L * ||x_adv - x||_2^2, both from one backward pass (the penalty does not
depend on the classifier's weights).

This module holds the paper's genuine parts (generator, tanh-space image, gradient input,
training source); the stage's notebook, sweeps and tables are built on it (issue #5).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from lib.attacks import eval_mode
from lib.errors import require
from lib.train import GeneratorSource

INPUTS = ("label", "image", "gradient")
ATANH_CLAMP = 1 - 1e-6


class PGNGenerator(nn.Module):
    """The generator of the paper's Table 1, sized from the input shape (C, H, W), H and W divisible by 4.

    y -> dense 1024 -> concat y -> dense (H/4)(W/4)·128 -> reshape -> concat y (broadcast) ->
    upconv 3x3/2 128 -> concat y -> upconv 3x3/2 128 -> concat [x, grad] -> upconv 3x3/1 128 ->
    upconv 3x3/1 C. ReLU between layers (not stated in the paper). ``use`` names the inputs kept;
    a dropped input is replaced by zeros (the ablation), so the shapes never change.
    """

    def __init__(self, in_shape: tuple[int, int, int], num_classes: int, width: int = 128, dense: int = 1024, use: tuple[str, ...] = INPUTS):
        super().__init__()
        c, h, w = in_shape
        require(h % 4 == 0 and w % 4 == 0, f"PGN needs H and W divisible by 4, got {h}x{w}")
        require(set(use) <= set(INPUTS), f"use must be a subset of {INPUTS}, got {use}")
        self.in_shape, self.k, self.width, self.use = in_shape, num_classes, width, tuple(use)
        self.base = (h // 4, w // 4)
        self.fc1 = nn.Linear(num_classes, dense)
        self.fc2 = nn.Linear(dense + num_classes, width * self.base[0] * self.base[1])
        self.up1 = nn.ConvTranspose2d(width + num_classes, width, 3, stride=2, padding=1, output_padding=1)
        self.up2 = nn.ConvTranspose2d(width + num_classes, width, 3, stride=2, padding=1, output_padding=1)
        self.up3 = nn.ConvTranspose2d(width + 2 * c, width, 3, stride=1, padding=1)
        self.out = nn.ConvTranspose2d(width, c, 3, stride=1, padding=1)

    @staticmethod
    def _with_label(z: torch.Tensor, y1: torch.Tensor) -> torch.Tensor:
        return torch.cat([z, y1[:, :, None, None].expand(-1, -1, *z.shape[-2:])], 1)

    def forward(self, grad: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The perturbation in tanh space, shaped like ``x``."""
        y1 = F.one_hot(y, self.k).float()
        if "label" not in self.use:
            y1 = torch.zeros_like(y1)
        if "image" not in self.use:
            x = torch.zeros_like(x)
        if "gradient" not in self.use:
            grad = torch.zeros_like(grad)
        z = F.relu(self.fc1(y1))
        z = F.relu(self.fc2(torch.cat([z, y1], 1))).view(-1, self.width, *self.base)
        z = F.relu(self.up1(self._with_label(z, y1)))
        z = F.relu(self.up2(self._with_label(z, y1)))
        z = F.relu(self.up3(torch.cat([z, x, grad], 1)))
        return self.out(z)


def tanh_space(x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """x_adv = (tanh(atanh(2x - 1) + g) + 1) / 2, with 2x - 1 clamped away from ±1; always in [0, 1]."""
    return (torch.tanh(torch.atanh((2 * x - 1).clamp(-ATANH_CLAMP, ATANH_CLAMP)) + g) + 1) / 2


def gradient_image(model: nn.Module, x: torch.Tensor, y: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Gradient w.r.t. x of the true-label softmax probability F(x)_y, per sample.

    ``reduction="mean"`` differentiates the batch MEAN of the probabilities (the public reference
    code; every gradient is then 1/N of the per-sample one), ``"sum"`` the sum (the per-sample
    gradient itself). The model's mode is left as it is; its weights get no gradient.
    """
    require(reduction in ("mean", "sum"), f"reduction must be mean or sum, got '{reduction}'")
    x = x.detach().requires_grad_(True)
    with torch.enable_grad(), eval_mode(model):
        p = F.softmax(model(x), 1).gather(1, y[:, None]).squeeze(1)
        (grad,) = torch.autograd.grad(p.mean() if reduction == "mean" else p.sum(), x)
    return grad.detach()


class PGNSource(GeneratorSource):
    """PGN as a training source: x_adv from G each batch; the c_L penalty enters as the extra loss term."""

    def __init__(self, generator: PGNGenerator, c_l: float, lr: float, reduction: str = "mean"):
        require(c_l >= 0, f"c_L must be >= 0, got {c_l}")
        self.generator, self.c_l, self.reduction = generator, c_l, reduction
        self.penalty: torch.Tensor | None = None

        def make_adv(model, x, y):
            x_adv = tanh_space(x, generator(gradient_image(model, x, y, reduction), x, y))
            self.penalty = (x_adv - x).flatten(1).pow(2).sum(1).mean()
            return x_adv

        super().__init__(make_adv, torch.optim.Adam(generator.parameters(), lr=lr, maximize=True))

    def extra_loss(self, logits_clean, logits_adv, y):
        """-c_L ||delta||^2: zero gradient for the classifier; G, which ascends, is pulled towards small perturbations."""
        return -self.c_l * self.penalty
