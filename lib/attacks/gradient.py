"""First-order L∞/L2 attacks: FGSM, FGM, BIM, PGD (random start, restarts) and MIM."""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn as nn

from lib.attacks.common import attack, check_inputs, loss_grad
from lib.attacks.threat import per_sample_norm, threat
from lib.errors import require
from lib.runtime import DryRun


@attack
def fgsm(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
    """Fast gradient sign method (Goodfellow et al. 2015): one L∞ step of size eps."""
    check_inputs(x, y, eps=eps)
    return threat("linf").project(x + eps * loss_grad(model, x, y).sign(), x, eps)


@attack
def fgm(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
    """Fast gradient method, L2: one step of L2 length eps along the gradient (then [0, 1])."""
    check_inputs(x, y, eps=eps)
    ball = threat("l2")
    return ball.project(ball.step(x, loss_grad(model, x, y), eps), x, eps)


def iterates(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    steps: int,
    step_size: float,
    norm: str = "linf",
    x_init: torch.Tensor | None = None,
) -> Iterator[torch.Tensor]:
    """Yield each projected-gradient iterate x_1 .. x_steps starting from ``x_init`` (default x).

    The model must already be in the mode wanted (the public attacks wrap this in eval mode).
    """
    ball = threat(norm)
    x_adv = x if x_init is None else x_init
    for _ in range(DryRun.iterations(steps)):
        x_adv = ball.project(ball.step(x_adv, loss_grad(model, x_adv, y), step_size), x, eps).detach()
        yield x_adv


def _check_steps(steps: int, restarts: int = 1) -> None:
    require(isinstance(steps, int) and steps >= 1, f"steps must be a positive integer, got {steps}")
    require(isinstance(restarts, int) and restarts >= 1, f"restarts must be a positive integer, got {restarts}")


@attack
def pgd(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    steps: int = 40,
    step_size: float | None = None,
    norm: str = "linf",
    random_start: bool = True,
    restarts: int = 1,
) -> torch.Tensor:
    """Projected gradient descent (Madry et al. 2018), L∞ or L2.

    ``step_size`` defaults to 2.5 * eps / steps. With several restarts each sample keeps the
    first restart that misclassifies it (else the last), so restarts never help the defender.
    """
    _check_steps(steps, restarts)
    step_size = 2.5 * eps / steps if step_size is None else step_size
    check_inputs(x, y, eps=eps, step_size=step_size)
    ball = threat(norm)
    best = x
    fooled = torch.zeros(len(y), dtype=torch.bool, device=x.device)
    for _ in range(restarts):
        start = ball.random_init(x, eps) if random_start else x
        *_, x_adv = iterates(model, x, y, eps, steps, step_size, norm, start)
        with torch.no_grad():
            now_fooled = model(x_adv).argmax(1) != y
        take = (~fooled).view(-1, *([1] * (x.dim() - 1)))
        best = torch.where(take, x_adv, best)
        fooled |= now_fooled
    return best


def bim(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, steps: int = 10, step_size: float | None = None
) -> torch.Tensor:
    """Basic iterative method (Kurakin et al. 2017): L∞ PGD from x, step eps/steps unless given."""
    _check_steps(steps)
    step_size = eps / steps if step_size is None else step_size
    return pgd(model, x, y, eps=eps, steps=steps, step_size=step_size, norm="linf", random_start=False)


@attack
def mim(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    steps: int = 10,
    step_size: float | None = None,
    decay: float = 1.0,
    norm: str = "l2",
) -> torch.Tensor:
    """Momentum iterative method (Dong et al. 2018): gradients L1-normalised, accumulated with ``decay``."""
    _check_steps(steps)
    step_size = eps / steps if step_size is None else step_size
    check_inputs(x, y, eps=eps, step_size=step_size, decay=decay)
    ball = threat(norm)
    g = torch.zeros_like(x)
    x_adv = x
    for _ in range(DryRun.iterations(steps)):
        grad = loss_grad(model, x_adv, y)
        g = decay * g + grad / (per_sample_norm(grad, 1) + 1e-12)
        x_adv = ball.project(ball.step(x_adv, g, step_size), x, eps).detach()
    return x_adv
