"""Evaluation: accuracy under attack, eps curves, rho, black-box transfer, per-iteration accuracy, cost.

Functions return plain numbers (fast_adversarial style) and run batch by batch on the model's device.
Every attack run goes through the evaluation store (:func:`lib.cache.remembered`): a re-run of a
stage with the same models, data and attack code loads its adversarial examples instead of
computing them again.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn

from lib.attacks import eval_mode, iterates, l2_distance
from lib.cache import remembered
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


def correct(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    """Per image, whether ``model`` classifies it correctly (bool, on the CPU): what the paired
    intervals of :mod:`lib.intervals` resample."""
    return predict(model, x, batch_size) == y.cpu()


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 500) -> float:
    """Clean accuracy in [0, 1]."""
    return float(correct(model, x, y, batch_size).float().mean())


def adversarial_examples(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    attack: Callable,
    batch_size: int = 500,
    desc: str | None = None,
    **params,
) -> torch.Tensor:
    """``attack`` applied batch by batch; returns x_adv on the CPU."""
    dev = _device(model)

    def craft() -> torch.Tensor:
        batches = list(_batches(x, y, batch_size, dev))
        return torch.cat(
            [attack(model, xb, yb, **params).cpu() for xb, yb in progress(batches, desc=desc or attack.__name__)]
        )

    return remembered("adversarial_examples", craft, model, x, y, attack, batch_size, params)


def robust_correct(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, attack: Callable, batch_size: int = 500, **params
) -> torch.Tensor:
    """Per image, whether ``model`` resists ``attack``'s example crafted against it (bool, on the CPU)."""
    return correct(model, adversarial_examples(model, x, y, attack, batch_size, **params), y, batch_size)


def robust_accuracy(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, attack: Callable, batch_size: int = 500, **params
) -> float:
    """Accuracy on ``attack``'s examples crafted against ``model`` itself (white-box)."""
    return float(robust_correct(model, x, y, attack, batch_size, **params).float().mean())


def correct_vs_eps(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    attack: Callable,
    eps_values: list[float],
    batch_size: int = 500,
    **params,
) -> list[torch.Tensor]:
    """Per-image correctness (bool) for each eps in ``eps_values`` (eps = 0: clean)."""
    return [
        correct(model, x, y, batch_size)
        if eps == 0
        else robust_correct(model, x, y, attack, batch_size, eps=eps, **params)
        for eps in eps_values
    ]


def accuracy_vs_eps(*args, **params) -> list[float]:
    """Robust accuracy for each eps (eps = 0 is clean accuracy): :func:`correct_vs_eps`'s arguments, its means."""
    return [float(c.float().mean()) for c in correct_vs_eps(*args, **params)]


def transfer_accuracy(
    source: nn.Module,
    target: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    attack: Callable,
    batch_size: int = 500,
    **params,
) -> float:
    """Black-box accuracy: ``target`` on examples crafted against ``source``."""
    return accuracy(target, adversarial_examples(source, x, y, attack, batch_size, **params), y, batch_size)


def minimal_norms(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, attack: Callable, batch_size: int = 500, **params
) -> torch.Tensor:
    """Per-example L2 norm of a minimal-perturbation attack's result (on the CPU).

    0 where ``model`` already misclassifies x, the perturbation's norm where the attack succeeds,
    inf where it fails. Accuracy under an L2 budget r is then ``(norms > r).mean()``.
    """
    norms = torch.zeros(len(y))
    keep = predict(model, x, batch_size) == y.cpu()
    if keep.any():
        x_adv = adversarial_examples(model, x[keep], y[keep], attack, batch_size, **params)
        success = predict(model, x_adv, batch_size) != y[keep].cpu()
        norms[keep] = torch.where(
            success, l2_distance(x_adv, x[keep].cpu()), torch.full_like(success, float("inf"), dtype=torch.float)
        )
    return norms


def rho_stats(norms: torch.Tensor) -> dict:
    """rho (Carlini & Wagner; PGN Eq. 6) from :func:`minimal_norms`: over the SUCCESSFUL examples only.

    Considers the examples classified correctly (norm > 0); returns the success rate, the mean and
    median L2 norm of the successful perturbations and their count (nan norms if none succeed).
    """
    attacked = norms[norms > 0]
    ok = attacked[torch.isfinite(attacked)]
    return {
        "success_rate": float(len(ok) / len(attacked)) if len(attacked) else float("nan"),
        "mean_l2": float(ok.mean()) if len(ok) else float("nan"),
        "median_l2": float(ok.median()) if len(ok) else float("nan"),
        "n_success": int(len(ok)),
        "n": int(len(attacked)),
    }


def rho(model: nn.Module, x: torch.Tensor, y: torch.Tensor, attack: Callable, batch_size: int = 500, **params) -> dict:
    """Minimal-perturbation statistics of ``attack`` on ``model`` (see :func:`rho_stats`)."""
    return rho_stats(minimal_norms(model, x, y, attack, batch_size, **params))


def accuracy_vs_norm(norms: torch.Tensor, radii: list[float]) -> list[float]:
    """Accuracy under a minimal-perturbation attack allowed an L2 budget r, for each r in ``radii``."""
    return [float((norms > r).float().mean()) for r in radii]


def mean_perturbation(x_adv: torch.Tensor, x: torch.Tensor) -> float:
    """Mean L2 norm of the perturbations x_adv - x over all examples (an attack's "average distortion")."""
    return float(l2_distance(x_adv.cpu(), x.cpu()).mean())


def closest_benign(benign: dict, target: float) -> tuple:
    """Benign-accuracy matching: the key of ``benign`` (key -> clean accuracy) closest to ``target``, and its gap."""
    key = min(benign, key=lambda k: abs(benign[k] - target))
    return key, benign[key] - target


def accuracy_per_iteration(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    steps: int,
    step_size: float,
    norm: str = "linf",
    batch_size: int = 500,
) -> list[float]:
    """Accuracy after each iteration 1..steps of an iterative attack from x (BIM when norm='linf')."""
    dev = _device(model)

    def curve() -> list[float]:
        correct = torch.zeros(steps, device=dev)
        with eval_mode(model):
            for xb, yb in _batches(x, y, batch_size, dev):
                for i, x_adv in enumerate(iterates(model, xb, yb, eps, steps, step_size, norm)):
                    with torch.no_grad():
                        correct[i] += (model(x_adv).argmax(1) == yb).sum()
        return (correct.cpu() / len(y)).tolist()

    return remembered("accuracy_per_iteration", curve, model, x, y, eps, steps, step_size, norm, batch_size)


def relative_cost(seconds: float, clean_seconds: float) -> float:
    """Wall time relative to clean training of the same model measured in the same run."""
    return seconds / clean_seconds if clean_seconds > 0 else float("nan")
