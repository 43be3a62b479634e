"""p1 — Jung: an ensemble of K convolutional generators trained against the classifier, the algorithm only.

Each generator maps an image to an L∞-bounded perturbation; the ensemble is trained by gradient ascent on the
classifier's loss while the classifier descends on the generators' images, both every batch
(:class:`EnsembleSource`, a training source of :func:`lib.train.train`).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from lib.errors import require
from lib.train import GeneratorSource

ASSIGNMENTS = ("split", "all")


class GeneratorEnsemble(nn.Module):
    """K generators phi_w (``depth`` 3x3 convs, ``width`` channels, residual: phi(x) = x + net(x)) as ONE module.

    The K networks are the groups of grouped convolutions, so all of them run in one call. With
    ``assignment="split"`` each sample of a batch goes to one generator (a random permutation,
    dealt round-robin; K x cheaper); with ``"all"`` every generator perturbs the whole batch and
    the classifier sees K x N samples. The output is boxed to [x - s, x + s] and [0, 1].
    """

    def __init__(self, channels: int, k: int, s: float, depth: int = 3, width: int = 16, assignment: str = "split"):
        super().__init__()
        require(assignment in ASSIGNMENTS, f"assignment must be one of {ASSIGNMENTS}, got '{assignment}'")
        self.channels, self.k, self.s, self.assignment = channels, k, float(s), assignment
        sizes = [channels] + [width] * (depth - 1) + [channels]
        layers: list[nn.Module] = []
        for i, (c_in, c_out) in enumerate(zip(sizes, sizes[1:])):
            layers.append(nn.Conv2d(k * c_in, k * c_out, 3, padding=1, groups=k))
            if i < depth - 1:
                layers.append(nn.ReLU())
        self.net = nn.Sequential(*layers)

    def box(self, phi: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """g = min(max(phi, x - s), x + s), then the valid pixel range."""
        return torch.minimum(torch.maximum(phi, x - self.s), x + self.s).clamp(0.0, 1.0)

    def _grouped(self, z: torch.Tensor) -> torch.Tensor:
        """``z``: [M, K*C, H, W], group k = generator k's input; returns the boxed samples, same layout."""
        return self.box(z + self.net(z), z)

    def forward(self, x: torch.Tensor, assignment: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Adversarial samples and, per sample, the index of the input it came from.

        ``split``: N samples aligned with ``x`` (index = arange(N)); ``all``: K*N samples,
        generator-major (sample k*N + i is generator k's version of x[i]).
        """
        n, c, h, w = x.shape
        k = self.k
        if (assignment or self.assignment) == "all":
            out = self._grouped(x.repeat(1, k, 1, 1)).view(n, k, c, h, w).transpose(0, 1).reshape(k * n, c, h, w)
            return out, torch.arange(n, device=x.device).repeat(k)
        per = math.ceil(n / k)
        perm = torch.randperm(n, device=x.device)
        order = perm.repeat(math.ceil(per * k / n))[: per * k]  # pad by wrapping round when k does not divide n
        z = x[order].view(k, per, c, h, w).transpose(0, 1).reshape(per, k * c, h, w)
        out = self._grouped(z).view(per, k, c, h, w).transpose(0, 1).reshape(per * k, c, h, w)[:n]
        return out[torch.argsort(perm)], torch.arange(n, device=x.device)

    def all_samples(self, x: torch.Tensor) -> torch.Tensor:
        """Every generator's sample of every image: [K, N, C, H, W]."""
        out, _ = self(x, "all")
        return out.view(self.k, *x.shape)


class EnsembleSource(GeneratorSource):
    """The generators as a training source: samples (and their labels) for the classifier; ascent after backward."""

    def __init__(self, ensemble: GeneratorEnsemble, lr: float, momentum: float):
        self.ensemble = ensemble

        def make_adv(model, x, y):
            x_adv, index = ensemble(x)
            return x_adv, y[index]

        super().__init__(make_adv, torch.optim.SGD(ensemble.parameters(), lr=lr, momentum=momentum, maximize=True))
