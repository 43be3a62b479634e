"""The evaluation protocol: minimal-perturbation norms, rho over successful examples, accuracy vs budget, matching."""

from __future__ import annotations

import math

import torch

from lib.evaluate import (
    accuracy_vs_norm,
    closest_benign,
    mean_perturbation,
    minimal_norms,
    predict,
    rho,
    rho_stats,
)


def _shift(model, x, y, amount):
    """A toy 'attack': adds ``amount`` to every pixel (clipped)."""
    return (x + amount).clamp(0, 1)


def test_minimal_norms_zero_for_errors_inf_for_failures(linear_model):
    x = torch.rand(40, 1, 4, 4)
    y = predict(linear_model, x)
    y[:5] = (y[:5] + 1) % 3  # five images the model already gets wrong
    unchanged = minimal_norms(linear_model, x, y, _shift, amount=0.0)
    assert (unchanged[:5] == 0).all() and torch.isinf(unchanged[5:]).all()
    stats = rho_stats(unchanged)
    assert stats["n"] == 35 and stats["n_success"] == 0 and stats["success_rate"] == 0 and math.isnan(stats["mean_l2"])


def test_rho_averages_only_successful_examples(linear_model):
    x = torch.full((30, 1, 4, 4), 0.2)
    x[15:] = torch.rand(15, 1, 4, 4) * 0.5
    y = predict(linear_model, x)
    norms = minimal_norms(linear_model, x, y, _shift, amount=0.5)
    moved = (x + 0.5).clamp(0, 1)
    success = predict(linear_model, moved) != y
    expected = (moved - x).flatten(1).norm(dim=1)[success]
    stats = rho(linear_model, x, y, _shift, amount=0.5)
    assert 0 < stats["n_success"] == int(success.sum()) < stats["n"]  # some succeed, some fail
    assert math.isclose(stats["mean_l2"], float(expected.mean()), rel_tol=1e-5)
    assert math.isclose(stats["median_l2"], float(expected.median()), rel_tol=1e-5)
    assert torch.isinf(norms[~success]).all()


def test_accuracy_vs_norm_is_the_share_of_examples_needing_more():
    norms = torch.tensor([0.0, 0.5, 1.0, float("inf")])
    assert accuracy_vs_norm(norms, [0.0, 0.4, 0.75, 2.0]) == [0.75, 0.75, 0.5, 0.25]


def test_mean_perturbation_and_benign_matching():
    x = torch.zeros(2, 1, 2, 2)
    assert math.isclose(mean_perturbation(x + torch.tensor([0.5, 0.0]).view(2, 1, 1, 1), x), 0.5)
    key, gap = closest_benign({"a": 0.80, "b": 0.87, "c": 0.95}, target=0.9)
    assert key == "b" and math.isclose(gap, -0.03)
