"""p2 — PGN (perturbation generator network): the generator, its inputs, its loss and its attack, the algorithm only.

PGN maps the classifier's input gradient image, the image and its label to an adversarial image in tanh
space; trained jointly with the classifier, it ascends the classifier's loss minus c_L times the squared L2
size of its perturbation (:class:`PGNSource`, a training source of :func:`lib.train.train`); alone against a
fixed classifier it is an attack (:func:`train_attacker`, :func:`pgn_attack`). Reference code: ATPGN/ATPGN.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

import lib.data as D
from lib.attacks import eval_mode
from lib.cache import cached
from lib.errors import require
from lib.runtime import Acceleration, DryRun, progress, seed_everything
from lib.train import Clean, training_precision

INPUTS = ("label", "image", "gradient")
ATANH_CLAMP = 1 - 1e-6


class PGNGenerator(nn.Module):
    """The generator of the paper's Table 1, sized from the input shape (C, H, W), H and W divisible by 4.

    y -> dense 1024 -> concat y -> dense (H/4)(W/4)·128 -> reshape -> concat y (broadcast) ->
    upconv 3x3/2 128 -> concat y -> upconv 3x3/2 128 -> concat [x, grad] -> upconv 3x3/1 128 ->
    upconv 3x3/1 C. ReLU between layers (not stated in the paper); ``leaky`` = the reference code's
    leaky ReLU (slope 0.2) with He-normal weights and zero biases, and its image input rescaled to
    [-1, 1] (the paper does not say either). ``use`` names the inputs kept; a dropped input is
    replaced by zeros (the ablation), so the shapes never change.
    """

    def __init__(
        self,
        in_shape: tuple[int, int, int],
        num_classes: int,
        width: int = 128,
        dense: int = 1024,
        use: tuple[str, ...] = INPUTS,
        leaky: bool = False,
    ):
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
        self.leaky = leaky
        if leaky:  # TF's VarianceScaling(2.0): std sqrt(2 / fan_in), the same fan_in as torch's for both layer kinds
            for layer in (self.fc1, self.fc2, self.up1, self.up2, self.up3, self.out):
                nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
                nn.init.zeros_(layer.bias)

    def _act(self, z: torch.Tensor) -> torch.Tensor:
        return F.leaky_relu(z, 0.2) if self.leaky else F.relu(z)

    @staticmethod
    def _with_label(z: torch.Tensor, y1: torch.Tensor) -> torch.Tensor:
        return torch.cat([z, y1[:, :, None, None].expand(-1, -1, *z.shape[-2:])], 1)

    def forward(self, grad: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The perturbation in tanh space, shaped like ``x``."""
        y1 = F.one_hot(y, self.k).float()
        if "label" not in self.use:
            y1 = torch.zeros_like(y1)
        if self.leaky:  # the reference feeds the image to G in [-1, 1]
            x = 2 * x - 1
        if "image" not in self.use:
            x = torch.zeros_like(x)
        if "gradient" not in self.use:
            grad = torch.zeros_like(grad)
        z = self._act(self.fc1(y1))
        z = self._act(self.fc2(torch.cat([z, y1], 1))).view(-1, self.width, *self.base)
        z = self._act(self.up1(self._with_label(z, y1)))
        z = self._act(self.up2(self._with_label(z, y1)))
        z = self._act(self.up3(torch.cat([z, x, grad], 1)))
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


class PGNSource(Clean):
    """PGN trained jointly with the classifier, as a source of :func:`lib.train.train`: each batch is one
    :func:`minmax_step` (the classifier trains on G's images only in the reference code: ``clean_weight`` 0).

    ``shared``: one Adam for both players, as the reference (one ``AdamOptimizer`` applies both
    players' gradients): G's parameters join the classifier's optimiser as a second group (its lr
    stays ``lr``) and G ascends by the sign of its gradient; otherwise G has its own Adam (lr ``lr``).
    ``ema_decay``: an exponential moving average of G's weights too (the reference averages both
    networks' and evaluates with the averages), read by :attr:`evaluated`."""

    def __init__(
        self,
        generator: PGNGenerator,
        c_l: float,
        lr: float,
        reduction: str = "mean",
        shared: bool = False,
        ema_decay: float | None = None,
    ):
        require(c_l >= 0, f"c_L must be >= 0, got {c_l}")
        require(ema_decay is None or 0 < ema_decay < 1, f"ema_decay must be in (0, 1), got {ema_decay}")
        self.generator, self.c_l, self.reduction, self.shared, self.lr = generator, c_l, reduction, shared, lr
        self.optimizer = None if shared else torch.optim.Adam(generator.parameters(), lr=lr, maximize=True)
        self.average = (
            None
            if ema_decay is None
            else AveragedModel(generator, multi_avg_fn=get_ema_multi_avg_fn(ema_decay), use_buffers=True)
        )

    @property
    def evaluated(self) -> PGNGenerator:
        """The generator the protocol measures: the moving average when there is one."""
        return self.generator if self.average is None else self.average.module

    def update(self, model: nn.Module, opt: torch.optim.Optimizer, x, y, idx, clean_weight: float) -> tuple:
        if self.shared and not any(g.get("generator") for g in opt.param_groups):
            opt.add_param_group({"params": list(self.generator.parameters()), "lr": self.lr, "generator": True})
        out = minmax_step(model, self.generator, opt, self.optimizer, x, y, self.c_l, clean_weight, self.reduction)
        if self.average is not None:
            self.average.update_parameters(self.generator)
        return out


def minmax_step(
    classifier: nn.Module,
    generator: PGNGenerator,
    classifier_opt: torch.optim.Optimizer,
    generator_opt: torch.optim.Optimizer | None,
    x: torch.Tensor,
    y: torch.Tensor,
    c_l: float,
    clean_weight: float = 0.0,
    reduction: str = "mean",
) -> tuple:
    """One batch of PGN's min-max game, both players on one objective from one backward pass:

        L = (1 - w) CE(F(x_adv), y) + w CE(F(x), y) - c_L ||x_adv - x||^2,   x_adv = tanh-space(x, G(grad, x, y))

    the classifier F descends L (the penalty has no gradient in its weights), G ascends it (``generator_opt``
    is built with ``maximize=True``; ``None``: G's parameters are a group of ``classifier_opt``, the
    reference's one Adam, and G's gradients are negated so that its descent step ascends L). Returns
    (L, clean logits, adversarial logits, labels) for the loop's bookkeeping."""
    with training_precision(x.device):
        if generator_opt is not None:
            generator_opt.zero_grad(set_to_none=True)
        x_adv = tanh_space(x, generator(gradient_image(classifier, x, y, reduction), x, y))
        penalty = _squared_norm(x_adv, x)
        classifier.train()
        logits_adv = classifier(x_adv)
        logits_clean = classifier(x) if clean_weight > 0 else None
        loss = (1 - clean_weight) * F.cross_entropy(logits_adv, y)
        if clean_weight > 0:
            loss = loss + clean_weight * F.cross_entropy(logits_clean, y)
        loss = loss + -c_l * penalty
    classifier_opt.zero_grad(set_to_none=True)  # with one shared Adam, G's gradients too
    loss.backward()
    if generator_opt is None:
        for p in generator.parameters():
            if p.grad is not None:
                p.grad.neg_()  # one descent step for both players: G's on -L, an ascent on L
    classifier_opt.step()  # F: minimises L (and G, when shared, maximises it)
    if generator_opt is not None:
        generator_opt.step()  # G: maximises L
    return loss, logits_clean, logits_adv, y


def _squared_norm(x_adv: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return (x_adv - x).flatten(1).pow(2).sum(1).mean()


def pgn_attack(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, generator: PGNGenerator, reduction: str = "mean"
) -> torch.Tensor:
    """A trained generator used as an attack on ``model`` (one gradient image, one forward pass of G)."""
    with eval_mode(generator), torch.no_grad():
        return tanh_space(x, generator(gradient_image(model, x, y, reduction), x, y))


def train_attacker(
    generator: PGNGenerator,
    classifier: nn.Module,
    loader,
    c_l: float,
    lr: float,
    epochs: int,
    reduction: str = "mean",
    max_batches: int | None = None,
    desc: str = "PGN attacker",
    seed: int = 0,
) -> PGNGenerator:
    """G alone against a FIXED classifier (Fig. 3, the example grid): ascends CE - c_L ||delta||^2; the classifier's
    weights never change. Seeded with ``seed``."""
    require(c_l >= 0, f"c_L must be >= 0, got {c_l}")
    dev = next(classifier.parameters()).device
    opt = torch.optim.Adam(generator.parameters(), lr=lr, maximize=True)
    params = list(generator.parameters())

    def fit() -> None:
        seed_everything(seed)
        cap = DryRun.batches(max_batches)
        for _ in progress(range(DryRun.epochs(epochs)), desc=desc):
            generator.train()
            for b, (x, y) in enumerate(D.batches(loader, dev, on_device=Acceleration.gpu_fast(dev))):
                if cap is not None and b >= cap:
                    break
                with eval_mode(classifier), training_precision(dev):
                    x_adv = tanh_space(x, generator(gradient_image(classifier, x, y, reduction), x, y))
                    objective = F.cross_entropy(classifier(x_adv), y) - c_l * _squared_norm(x_adv, x)
                opt.zero_grad(set_to_none=True)
                objective.backward(inputs=params)
                opt.step()

    key = (classifier, loader, c_l, opt, epochs, reduction, max_batches, seed)
    cached(desc, {"generator": generator}, fit, key=key, seeded=True)
    return generator.eval()
