"""Evaluation: accuracy under attack, eps curves, rho, black-box transfer, per-iteration accuracy, cost.

Functions return plain numbers (fast_adversarial style) and run batch by batch on the model's device.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn

from lib.attacks import eval_mode, iterates, l2_distance
from lib.runtime import progress


def _batches(x: torch.Tensor, y: torch.Tensor, batch_size: int, device: torch.device):
    for i in range(0, len(y), batch_size):
        yield x[i : i + batch_size].to(device), y[i : i + batch_size].to(device)


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    """Predicted labels (on the CPU) for images ``x`` in [0, 1]."""
    dev = _device(model)
    with eval_mode(model):
        return torch.cat([model(xb.to(dev)).argmax(1).cpu() for xb in x.split(batch_size)])


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 500) -> float:
    """Clean accuracy in [0, 1]."""
    return float((predict(model, x, batch_size) == y.cpu()).float().mean())


def adversarial_examples(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, attack: Callable, batch_size: int = 500, desc: str | None = None, **params
) -> torch.Tensor:
    """``attack`` applied batch by batch; returns x_adv on the CPU."""
    dev = _device(model)
    batches = list(_batches(x, y, batch_size, dev))
    return torch.cat([attack(model, xb, yb, **params).cpu() for xb, yb in progress(batches, desc=desc or attack.__name__)])


def robust_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, attack: Callable, batch_size: int = 500, **params) -> float:
    """Accuracy on ``attack``'s examples crafted against ``model`` itself (white-box)."""
    return accuracy(model, adversarial_examples(model, x, y, attack, batch_size, **params), y, batch_size)


def accuracy_vs_eps(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, attack: Callable, eps_values: list[float], batch_size: int = 500, **params
) -> list[float]:
    """Robust accuracy for each eps in ``eps_values`` (eps = 0 is clean accuracy)."""
    return [accuracy(model, x, y, batch_size) if eps == 0 else robust_accuracy(model, x, y, attack, batch_size, eps=eps, **params) for eps in eps_values]


def transfer_accuracy(
    source: nn.Module, target: nn.Module, x: torch.Tensor, y: torch.Tensor, attack: Callable, batch_size: int = 500, **params
) -> float:
    """Black-box accuracy: ``target`` on examples crafted against ``source``."""
    return accuracy(target, adversarial_examples(source, x, y, attack, batch_size, **params), y, batch_size)


def rho(model: nn.Module, x: torch.Tensor, y: torch.Tensor, attack: Callable, batch_size: int = 500, **params) -> dict:
    """Minimal-perturbation statistics over SUCCESSFUL adversarial examples only.

    Considers the examples ``model`` classifies correctly; returns success rate, mean and median
    L2 norm of the successful perturbations, and their count (nan norms if none succeed).
    """
    keep = predict(model, x, batch_size) == y.cpu()
    x, y = x[keep], y[keep]
    if len(y) == 0:
        return {"success_rate": float("nan"), "mean_l2": float("nan"), "median_l2": float("nan"), "n_success": 0, "n": 0}
    x_adv = adversarial_examples(model, x, y, attack, batch_size, **params)
    success = predict(model, x_adv, batch_size) != y.cpu()
    norms = l2_distance(x_adv, x.cpu())[success]
    return {
        "success_rate": float(success.float().mean()),
        "mean_l2": float(norms.mean()) if len(norms) else float("nan"),
        "median_l2": float(norms.median()) if len(norms) else float("nan"),
        "n_success": int(success.sum()),
        "n": int(len(y)),
    }


def accuracy_per_iteration(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, steps: int, step_size: float, norm: str = "linf", batch_size: int = 500
) -> list[float]:
    """Accuracy after each iteration 1..steps of an iterative attack from x (BIM when norm='linf')."""
    dev = _device(model)
    correct = torch.zeros(steps, device=dev)
    with eval_mode(model):
        for xb, yb in _batches(x, y, batch_size, dev):
            for i, x_adv in enumerate(iterates(model, xb, yb, eps, steps, step_size, norm)):
                with torch.no_grad():
                    correct[i] += (model(x_adv).argmax(1) == yb).sum()
    return (correct.cpu() / len(y)).tolist()


def relative_cost(seconds: float, clean_seconds: float) -> float:
    """Wall time relative to clean training of the same model measured in the same run."""
    return seconds / clean_seconds if clean_seconds > 0 else float("nan")
