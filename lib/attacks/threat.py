"""Threat models as small classes with ``random_init``, ``step`` and ``project`` (Madry's robustness style)."""

from __future__ import annotations

import torch

from lib.errors import require

_TINY = 1e-12


def per_sample_norm(v: torch.Tensor, p: float = 2) -> torch.Tensor:
    """Norm of each sample of a batch, shaped ``[N, 1, 1, 1]``-broadcastable."""
    flat = v.flatten(1)
    n = flat.abs().amax(1) if p == float("inf") else flat.norm(p=p, dim=1)
    return n.view(-1, *([1] * (v.dim() - 1)))


def l2_distance(x_adv: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Per-sample L2 distance, shape ``[N]``."""
    return (x_adv - x).flatten(1).norm(dim=1)


class LinfBall:
    """L∞ ball of radius eps: signed-gradient steps, element-wise clipping."""

    name = "linf"

    def random_init(self, x: torch.Tensor, eps: float) -> torch.Tensor:
        return (x + torch.empty_like(x).uniform_(-eps, eps)).clamp(0, 1)

    def step(self, x: torch.Tensor, grad: torch.Tensor, step_size: float) -> torch.Tensor:
        return x + step_size * grad.sign()

    def project(self, x_adv: torch.Tensor, x: torch.Tensor, eps: float) -> torch.Tensor:
        return torch.min(torch.max(x_adv, x - eps), x + eps).clamp(0, 1)


class L2Ball:
    """L2 ball of radius eps: normalised-gradient steps, radial projection."""

    name = "l2"

    def random_init(self, x: torch.Tensor, eps: float) -> torch.Tensor:
        d = torch.randn_like(x)
        d = d / (per_sample_norm(d) + _TINY)
        r = torch.rand(x.shape[0], *([1] * (x.dim() - 1)), device=x.device) ** (1.0 / x[0].numel())
        return (x + d * r * eps).clamp(0, 1)

    def step(self, x: torch.Tensor, grad: torch.Tensor, step_size: float) -> torch.Tensor:
        return x + step_size * grad / (per_sample_norm(grad) + _TINY)

    def project(self, x_adv: torch.Tensor, x: torch.Tensor, eps: float) -> torch.Tensor:
        d = x_adv - x
        factor = torch.clamp(eps / (per_sample_norm(d) + _TINY), max=1.0)
        return (x + d * factor).clamp(0, 1)


THREATS = {"linf": LinfBall(), "l2": L2Ball()}


def threat(norm: str) -> LinfBall | L2Ball:
    """The threat model for ``norm`` ('linf' or 'l2')."""
    require(norm in THREATS, f"unknown norm '{norm}'; choose 'linf' or 'l2'")
    return THREATS[norm]
