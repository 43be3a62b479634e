"""What every attack shares: input checks, eval mode with restore, input gradients."""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Callable, Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F

from lib.errors import require


def check_inputs(x: torch.Tensor, y: torch.Tensor, **budgets: float) -> None:
    """Reject non-finite or out-of-range images, mismatched labels and negative budgets, before any work."""
    require(x.dim() >= 2 and x.shape[0] == y.shape[0], f"x {tuple(x.shape)} and y {tuple(y.shape)} do not match")
    require(bool(torch.isfinite(x).all()), "input images contain NaN or Inf")
    require(bool((x.min() >= 0) & (x.max() <= 1)), "input images must lie in [0, 1]")
    for name, value in budgets.items():
        require(
            value is not None and math.isfinite(value) and value >= 0,
            f"{name} must be a finite number >= 0, got {value}",
        )


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Run ``model`` in eval mode with parameter gradients off; restore both afterwards."""
    was_training = model.training
    flags = [p.requires_grad for p in model.parameters()]
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        yield model
    finally:
        for p, f in zip(model.parameters(), flags):
            p.requires_grad_(f)
        model.train(was_training)


def attack(fn: Callable) -> Callable:
    """Decorator: the attack runs in eval mode, restores the model's mode, returns a detached tensor."""

    @functools.wraps(fn)
    def wrapper(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        with eval_mode(model):
            return fn(model, x.detach(), y.detach(), *args, **kwargs).detach()

    return wrapper


def loss_grad(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Gradient of the summed cross-entropy w.r.t. the input (per-sample gradients, batched)."""
    x = x.detach().requires_grad_(True)
    loss = F.cross_entropy(model(x), y, reduction="sum")
    return torch.autograd.grad(loss, x)[0]
