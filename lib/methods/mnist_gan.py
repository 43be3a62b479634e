"""p5 — Xia & Liu: the generator G of adversarial perturbations and its two training schemes, the algorithm only.

G maps an image to an L∞-bounded perturbation (an *intensity*); against a frozen classifier D it ascends D's
cross-entropy (:func:`generator_step`); trained alternately with D, G ascends once against the current D and D
then descends on G's images (:class:`AlternatingGenerator`, a training source of :func:`lib.train.train`).
Intensities are in the reference code's units by default (fxia22/advGAN standardises images globally, so an
intensity is a multiple of the training pixels' std: :func:`pixel_eps`).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

import lib.data as D
from lib.attacks import eval_mode
from lib.errors import require
from lib.train import Clean

UNITS = ("normalized", "pixel")


G_OUTPUTS = ("scale", "clamp")


class PerturbationGenerator(nn.Module):
    """G: encoder-decoder (4 stride-2 convs down, 4 transposed convs up) -> ``eps * tanh``.

    The reference G (DCGAN blocks, ``width`` = ngf = 8, BatchNorm, LeakyReLU down / ReLU up, no
    biases, N(0, 0.02) init). Inputs are zero-padded to ``size`` (32 for MNIST) and the output is
    cropped back, so ``|G(x)|_∞ <= eps`` by construction; :meth:`perturb` adds it and clips to [0, 1].
    ``output="scale"`` (ours): ``eps * tanh``, so every intensity spans tanh's range; ``"clamp"`` (the
    reference): ``tanh`` clamped at ``±eps``, which saturates at the budget as soon as |tanh| > eps.
    """

    def __init__(
        self, in_shape: tuple[int, int, int], eps: float, width: int = 8, size: int = 32, output: str = "scale"
    ):
        super().__init__()
        require(output in G_OUTPUTS, f"output must be one of {G_OUTPUTS}, got '{output}'")
        self.output = output
        c, h, w = in_shape
        require(size % 16 == 0 and size >= max(h, w), f"size must be a multiple of 16 and >= {max(h, w)}, got {size}")
        self.eps, self.in_shape, self.size = float(eps), in_shape, size
        down, up = [c, width, 2 * width, 4 * width, 8 * width], [8 * width, 4 * width, 2 * width, width]
        layers: list[nn.Module] = []
        for i in range(4):
            layers.append(nn.Conv2d(down[i], down[i + 1], 4, 2, 1, bias=False))
            layers += ([nn.BatchNorm2d(down[i + 1])] if i else []) + [nn.LeakyReLU(0.2)]
        for i in range(3):
            layers += [nn.ConvTranspose2d(up[i], up[i + 1], 4, 2, 1, bias=False), nn.BatchNorm2d(up[i + 1]), nn.ReLU()]
        layers += [nn.ConvTranspose2d(width, c, 4, 2, 1, bias=False), nn.Tanh()]
        self.net = nn.Sequential(*layers)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.normal_(m.weight, 0.0, 0.02)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.normal_(m.weight, 1.0, 0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The perturbation, ``|delta|_∞ <= eps``."""
        h, w = x.shape[-2:]
        top, left = (self.size - h) // 2, (self.size - w) // 2
        out = self.net(F.pad(x, (left, self.size - w - left, top, self.size - h - top)))
        out = out[..., top : top + h, left : left + w]
        return self.eps * out if self.output == "scale" else out.clamp(-self.eps, self.eps)

    def perturb(self, x: torch.Tensor) -> torch.Tensor:
        """G's adversarial image: ``clip(x + G(x), 0, 1)``."""
        return (x + self(x)).clamp(0.0, 1.0)


def generator_optimizer(G: nn.Module, name: str, lr: float) -> torch.optim.Optimizer:
    """Plain SGD or Adam that ASCENDS the loss (the reference flips D's gradient)."""
    if name == "adam":
        return torch.optim.Adam(G.parameters(), lr=lr, maximize=True)
    return torch.optim.SGD(G.parameters(), lr=lr, maximize=True)


def generator_step(
    G: PerturbationGenerator, classifier: nn.Module, x: torch.Tensor, y: torch.Tensor, opt: torch.optim.Optimizer
) -> torch.Tensor:
    """One ascent step of G on CE(D(x + G(x)), y) with D's weights held fixed; returns the loss."""
    with eval_mode(classifier):
        loss = F.cross_entropy(classifier(G.perturb(x)), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
    opt.step()
    return loss.detach()


def generator_attack(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, generator: PerturbationGenerator
) -> torch.Tensor:
    """G used as an attack (one forward pass; ``model`` and ``y`` unused), in the attack signature."""
    with eval_mode(generator), torch.no_grad():
        return generator.perturb(x)


class AlternatingGenerator(Clean):
    """Phase 3's source: each batch G ascends once against the current D, then D trains on G's images."""

    def __init__(self, G: PerturbationGenerator, opt: torch.optim.Optimizer):
        self.G, self.opt = G, opt

    def __call__(self, model, x, y, idx):
        self.G.train()
        generator_step(self.G, model, x, y, self.opt)
        with torch.no_grad():
            return self.G.perturb(x)


def pixel_std(split: D.Split) -> float:
    """Global std of the training pixels in [0, 1] (the reference standardises with it)."""
    return float(D.as_float(split.x).std())


def pixel_eps(intensity: float, std: float, units: str) -> float:
    """An intensity in [0, 1] pixel units."""
    return intensity * std if units == "normalized" else intensity
