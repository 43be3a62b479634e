"""Intervals of the claims' quantities and the verdict of an interval against a margin, on hand cases."""

from __future__ import annotations

import numpy as np
import pytest

from lib import claims as C
from lib import intervals as I


def test_the_exact_binomial_interval_of_a_known_case():
    """0 of 10 right: the Clopper-Pearson upper bound is 1 - 0.025^(1/10) = 30.85%; 10 of 10, symmetric."""
    none = I.accuracy(np.zeros(10))
    assert (none.estimate, none.low) == (0.0, 0.0) and none.high == pytest.approx(100 * (1 - 0.025 ** (1 / 10)))
    every = I.accuracy(np.ones(10))
    assert every.low == pytest.approx(100 * 0.025 ** (1 / 10)) and every.high == 100.0
    p1 = I.accuracy(np.r_[np.ones(425), np.zeros(75)])  # p1's base at its 85% floor: 425 of 500
    assert p1.estimate == 85.0 and p1.low < 85.0 < p1.high and p1.n_images == 500


def test_a_curves_accuracy_stored_as_a_fraction_gets_the_same_exact_interval():
    """A figure's error bar: 0 of 10 as the fraction 0.0 is the interval above; NaN (not measured) stays NaN."""
    zero = I.measured_accuracy(0.0, 10)
    assert (zero.low, zero.high) == (0.0, pytest.approx(100 * (1 - 0.025 ** (1 / 10))))
    half = I.measured_accuracy(0.85, 500)
    assert (half.low, half.high) == (I.accuracy(np.r_[np.ones(425), np.zeros(75)]).low, pytest.approx(88.0, abs=0.2))
    assert np.isnan(I.measured_accuracy(float("nan"), 10).estimate)


def test_a_paired_difference_of_one_image_in_500_is_not_a_finding():
    """p1's "proposed loses some clean accuracy" was decided on -0.2 points (1 image of 500)."""
    rng = np.random.default_rng(0)
    base = rng.random(500) < 0.85
    proposed = base.copy()
    proposed[np.flatnonzero(base)[0]] = False  # one image lost
    d = I.paired_difference(proposed, base)
    assert d.estimate == pytest.approx(-0.2) and d.low < -0.2 and d.high >= 0.0
    assert C.below(0.0).decide(d.low, d.high) == "inconclusive"
    assert I.mcnemar(proposed, base) == 1.0  # 1 discordant pair: no evidence at all


def test_a_clear_paired_difference_is_decided():
    rng = np.random.default_rng(1)
    b = rng.random(1000) < 0.5
    a = b | (rng.random(1000) < 0.2)  # a gets right every image b does, and ~10% more
    d = I.paired_difference(a, b)
    assert d.low > 5 and C.above(1.0).decide(d.low, d.high) == "held"
    assert I.mcnemar(a, b) < 1e-6
    same = I.paired_difference(b, b)
    assert (same.low, same.high) == (0.0, 0.0)


def test_seeds_widen_the_interval_of_a_difference():
    """Two models whose per-seed accuracies swing by 10 points: the two-level interval covers the seeds,
    the images-only one of a single seed does not."""
    rng = np.random.default_rng(2)
    a = np.stack([rng.random(400) < p for p in (0.55, 0.65, 0.75)])
    b = np.stack([rng.random(400) < 0.6 for _ in range(3)])
    one, three = I.paired_difference(a[:1], b[:1]), I.paired_difference(a, b)
    assert three.n_seeds == 3 and three.method.startswith("two-level")
    assert three.high - three.low > one.high - one.low


def test_the_median_per_round_ratio_cancels_a_drift_that_hits_both_sides():
    drift = np.array([1.0, 1.3, 1.0, 0.9, 1.25, 1.0, 1.1])  # the machine's speed, round by round
    r = I.paired_ratio(0.5 * drift, 1.0 * drift)
    assert (r.estimate, r.low, r.high) == pytest.approx((0.5, 0.5, 0.5))  # every round's ratio is exactly 0.5
    noisy = I.paired_ratio([1.0, 1.1, 0.9, 1.0, 1.05], [2.0, 2.1, 1.9, 2.0, 2.2])
    assert noisy.low < noisy.estimate < noisy.high < 0.9 and C.below(0.9).decide(noisy.low, noisy.high) == "held"
    assert noisy.method == "median of 5 interleaved rounds"
    assert I.spread([1.0, 1.1, 0.9, 1.0, 1.05]) == pytest.approx(0.05)  # interquartile range / median
    assert I.spread([1.0, 1.1, 0.9, 1.0, 9.0]) == pytest.approx(0.1)  # one wild repeat barely moves it


@pytest.mark.parametrize(
    "rule,low,high,verdict",
    [
        (C.above(1.0), 1.5, 4.0, "held"),  # "beats": more than 1 point, the whole interval
        (C.above(1.0), -3.0, 0.5, "did not hold"),
        (C.above(1.0), 0.2, 2.5, "inconclusive"),  # straddles the margin
        (C.not_above(2.0), -1.0, 1.9, "held"),  # "similar": within 2 points
        (C.not_above(2.0), 2.5, 6.0, "did not hold"),
        (C.below(0.9), 0.4, 0.6, "held"),  # "cheaper": ratio below 0.9
        (C.below(0.9), 0.8, 1.2, "inconclusive"),
        (C.above(0.0), float("nan"), 1.0, "inconclusive"),
    ],
)
def test_each_verdict_of_an_interval_against_a_margin(rule, low, high, verdict):
    assert rule.decide(low, high) == verdict


def test_a_list_rule_has_no_interval_verdict():
    with pytest.raises(ValueError, match="ordered margin"):
        C.NONE_FLAGGED.decide(0.0, 1.0)


def test_a_mean_difference_of_minimal_norms_reads_each_model_on_its_successful_images():
    """C&W norms of two models on the same images; NaN (the attack failed, or nothing to attack) leaves
    the image out of that model's mean only, as rho_cw does."""
    a = np.array([1.0, 2.0, 3.0, np.nan])
    b = np.array([1.0, 1.0, np.nan, 1.0])
    d = I.mean_difference(a, b)
    assert d.estimate == pytest.approx(2.0 - 1.0) and d.n_images == 4
    shifted = I.mean_difference(b + 0.5, b)  # every image 0.5 apart: nothing to resample
    assert (shifted.estimate, shifted.low, shifted.high) == pytest.approx((0.5, 0.5, 0.5))


def test_a_clear_mean_difference_is_decided_and_noise_is_not():
    rng = np.random.default_rng(3)
    b = rng.lognormal(0.0, 0.4, 60)
    clear = I.mean_difference(1.5 * b, b)
    assert clear.low > 0 and C.not_below(0.0).decide(clear.low, clear.high) == "held"
    assert C.not_below(0.0).decide(-clear.high, -clear.low) == "did not hold"
    noise = I.mean_difference(b * rng.lognormal(0.0, 0.3, 60), b)
    assert noise.low < 0 < noise.high and C.not_below(0.0).decide(noise.low, noise.high) == "inconclusive"


def test_a_statistic_over_images_gets_a_percentile_interval_around_its_own_value():
    """The bootstrap over images of a mean of 0/1 agrees with the exact binomial interval within a point;
    a statistic that every resample gives alike has a point interval."""
    right = np.r_[np.ones(300), np.zeros(700)]
    boot = I.over_images(lambda idx: 100 * right[idx].mean(), len(right))
    exact = I.accuracy(right)
    assert boot.estimate == exact.estimate == 30.0
    assert boot.low == pytest.approx(exact.low, abs=1.0) and boot.high == pytest.approx(exact.high, abs=1.0)
    constant = I.over_images(lambda idx: 3.0, 50)
    assert (constant.estimate, constant.low, constant.high) == (3.0, 3.0, 3.0)
