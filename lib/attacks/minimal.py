"""Minimal-perturbation L2 attacks: DeepFool and Carlini-Wagner L2 (batched)."""

from __future__ import annotations

import torch
import torch.nn as nn

from lib.attacks.common import attack, check_inputs
from lib.errors import require
from lib.runtime import DryRun


def _candidate_classes(logits: torch.Tensor, y: torch.Tensor, candidates: int) -> torch.Tensor:
    """[N, candidates]: the true class first, then the highest-scoring other classes."""
    masked = logits.scatter(1, y[:, None], float("-inf"))
    others = masked.argsort(1, descending=True)[:, : candidates - 1]
    return torch.cat([y[:, None], others], 1)


@attack
def deepfool(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    steps: int = 50,
    candidates: int = 10,
    overshoot: float = 0.02,
) -> torch.Tensor:
    """DeepFool L2 (Moosavi-Dezfooli et al. 2016), multi-class, batched over samples.

    Each step linearises the margin to the ``candidates - 1`` most likely wrong classes and
    moves every still-correct sample to the nearest linearised boundary; the accumulated step is
    applied with ``(1 + overshoot)`` and clipped to [0, 1]. Samples already fooled stop moving.
    """
    check_inputs(x, y, overshoot=overshoot)
    require(steps >= 1, f"steps must be >= 1, got {steps}")
    with torch.no_grad():
        logits0 = model(x)
    k = min(candidates, logits0.shape[1])
    require(k >= 2, "DeepFool needs at least 2 candidate classes")
    classes = _candidate_classes(logits0, y, k)
    total = torch.zeros_like(x)
    x_adv = x
    rows = torch.arange(len(y), device=x.device)
    for _ in range(DryRun.iterations(steps)):
        xg = x_adv.detach().requires_grad_(True)
        logits = model(xg)
        active = logits.argmax(1) == y
        if not bool(active.any()):
            break
        picked = logits.gather(1, classes)  # [N, k]
        diffs = picked[:, 1:] - picked[:, :1]  # margin to each wrong class (negative while correct)
        grads = torch.stack(
            [torch.autograd.grad(diffs[:, j].sum(), xg, retain_graph=j < k - 2)[0] for j in range(k - 1)], 1
        )  # [N, k-1, ...]: one backward per candidate class, batched over samples
        gnorm = grads.flatten(2).norm(dim=2) + 1e-8
        dist = diffs.detach().abs() / gnorm
        best = dist.argmin(1)
        w = grads[rows, best]
        step = ((dist[rows, best] + 1e-4) / gnorm[rows, best]).view(-1, *([1] * (x.dim() - 1))) * w
        total = total + step * active.view(-1, *([1] * (x.dim() - 1)))
        x_adv = (x + (1 + overshoot) * total).clamp(0, 1).detach()
    return x_adv


@attack
def cw_l2(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    steps: int = 100,
    binary_steps: int = 9,
    initial_const: float = 1e-3,
    lr: float = 1e-2,
    confidence: float = 0.0,
    abort_early: bool = True,
) -> torch.Tensor:
    """Carlini-Wagner L2 (2017) in tanh space with a per-sample binary search over c.

    Returns, per sample, the smallest-L2 adversarial example found over all binary-search steps;
    samples never fooled are returned unchanged.
    """
    check_inputs(x, y, initial_const=initial_const, lr=lr, confidence=confidence)
    require(steps >= 1 and binary_steps >= 1, "steps and binary_steps must be >= 1")
    n = len(y)
    w = torch.atanh((2 * x - 1) * (1 - 1e-6))
    const = torch.full((n,), float(initial_const), device=x.device)
    lower = torch.zeros(n, device=x.device)
    upper = torch.full((n,), float("inf"), device=x.device)
    best_l2 = torch.full((n,), float("inf"), device=x.device)
    best_adv = x.clone()
    onehot = torch.nn.functional.one_hot(y, model(x[:1]).shape[1]).bool()
    shape = (-1, *([1] * (x.dim() - 1)))
    check_every = max(1, steps // 10)
    for _ in range(DryRun.iterations(binary_steps)):
        modifier = torch.zeros_like(x, requires_grad=True)
        opt = torch.optim.Adam([modifier], lr=lr)
        found = torch.zeros(n, dtype=torch.bool, device=x.device)
        prev = torch.tensor(float("inf"), device=x.device)
        for step in range(DryRun.iterations(steps)):
            x_new = (torch.tanh(w + modifier) + 1) / 2
            logits = model(x_new)
            real = logits[onehot]
            other = logits.masked_fill(onehot, float("-inf")).amax(1)
            margin = real - other + confidence
            l2sq = (x_new - x).flatten(1).pow(2).sum(1)
            loss = (l2sq + const * margin.clamp(min=0)).sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
            with torch.no_grad():
                is_adv = margin <= 0 if confidence > 0 else logits.argmax(1) != y
                better = is_adv & (l2sq < best_l2)
                best_l2 = torch.where(better, l2sq, best_l2)
                best_adv = torch.where(better.view(shape), x_new, best_adv)
                found |= is_adv
                if abort_early and step % check_every == check_every - 1:
                    if not bool(loss < 0.9999 * prev):
                        break
                    prev = loss.detach()
        upper = torch.where(found, torch.minimum(upper, const), upper)
        lower = torch.where(found, lower, torch.maximum(lower, const))
        const = torch.where(torch.isinf(upper), const * 10, (lower + upper) / 2)
    return best_adv
