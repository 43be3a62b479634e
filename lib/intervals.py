"""95% intervals for the quantities claims compare, from scipy (no hand-rolled statistics).

- one model's accuracy on ``n`` test images: the exact binomial (Clopper-Pearson) interval;
- the difference of two models' accuracies on the same images: a paired bootstrap (BCa) over the
  images; with several training seeds per model, a two-level bootstrap (seeds, then images, the
  same images for both models) so that the interval covers training variance as well;
- a ratio of timings taken in interleaved rounds (:mod:`lib.timing`): the median of the per-round
  ratios, its interval by a bootstrap over the rounds;
- an exact McNemar test of two models on the same images (the discordant pairs, binomial);
- the difference of two models' mean minimal perturbations (C&W norms) on the same images: a paired
  BCa bootstrap over the images, each mean over the images where its attack succeeded;
- any other statistic of per-image measurements (an epoch read off accuracy curves): a percentile
  bootstrap over the images.

Accuracies and differences are in percent (points); :meth:`lib.claims.Rule.decide` reads an
interval against a claim's margin.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike
from scipy import stats

CONFIDENCE = 0.95
RESAMPLES = 2000


@dataclass(frozen=True)
class Interval:
    """An estimate and its 95% interval; how it was computed and on how many images and seeds."""

    estimate: float
    low: float
    high: float
    method: str
    n_images: int
    n_seeds: int = 1

    def to_json(self) -> dict:
        return {
            "estimate": round(self.estimate, 4),
            "low": round(self.low, 4),
            "high": round(self.high, 4),
            "method": self.method,
            "n_images": self.n_images,
            "n_seeds": self.n_seeds,
        }

    def __str__(self) -> str:
        return f"{self.estimate:.2f} [{self.low:.2f}, {self.high:.2f}]"


def _per_seed(correct: ArrayLike) -> np.ndarray:
    """Per-image correctness as a (seeds, images) array of 0/1."""
    a = np.asarray(correct, dtype=float)
    return a[None, :] if a.ndim == 1 else a


def accuracy(correct: ArrayLike) -> Interval:
    """Accuracy (%) of one model from its per-image correctness: the exact binomial interval."""
    a = _per_seed(correct)
    if a.shape[0] != 1:
        raise ValueError("accuracy() takes one model's correctness; for several seeds use paired_difference")
    n, k = a.shape[1], int(a.sum())
    ci = stats.binomtest(k, n).proportion_ci(confidence_level=CONFIDENCE, method="exact")
    return Interval(100 * k / n, 100 * ci.low, 100 * ci.high, "exact binomial (Clopper-Pearson)", n)


def measured_accuracy(fraction: float, n: int) -> Interval:
    """Accuracy (%) stored as a fraction of ``n`` test images (a curve's point): :func:`accuracy`'s exact
    interval; NaN (not measured) stays NaN."""
    if math.isnan(fraction):
        return Interval(math.nan, math.nan, math.nan, "not measured", n)
    k = round(fraction * n)
    return accuracy(np.r_[np.ones(k), np.zeros(n - k)])


def paired_difference(a: ArrayLike, b: ArrayLike, seed: int = 0) -> Interval:
    """Accuracy of ``a`` minus that of ``b`` (points) on the same images: per-image correctness, one
    row per training seed (``(seeds, images)``; a 1-D array is one seed). One seed: a paired BCa
    bootstrap over the images; several: a two-level percentile bootstrap (seeds of each model drawn
    independently, then images, the same for both models)."""
    a, b = _per_seed(a), _per_seed(b)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"a paired difference needs the same images: {a.shape[1]} vs {b.shape[1]}")
    n = a.shape[1]
    estimate = 100 * (a.mean() - b.mean())
    rng = np.random.default_rng(seed)
    if a.shape[0] == 1 and b.shape[0] == 1:
        d = a[0] - b[0]
        if np.all(d == d[0]):  # every image agrees the same way: no variation to resample
            return Interval(estimate, estimate, estimate, "paired bootstrap (BCa), images", n)
        ci = stats.bootstrap(
            (d,),
            lambda x, axis: 100 * x.mean(axis=axis),
            vectorized=True,
            method="BCa",
            confidence_level=CONFIDENCE,
            n_resamples=RESAMPLES,
            rng=rng,
        ).confidence_interval
        return Interval(estimate, float(ci.low), float(ci.high), "paired bootstrap (BCa), images", n)
    images = rng.integers(0, n, size=(RESAMPLES, n))
    rows_a = rng.integers(0, a.shape[0], size=(RESAMPLES, a.shape[0]))
    rows_b = rng.integers(0, b.shape[0], size=(RESAMPLES, b.shape[0]))
    mean_a = a[rows_a[:, :, None], images[:, None, :]].mean(axis=(1, 2))
    mean_b = b[rows_b[:, :, None], images[:, None, :]].mean(axis=(1, 2))
    low, high = np.quantile(100 * (mean_a - mean_b), [(1 - CONFIDENCE) / 2, (1 + CONFIDENCE) / 2])
    method = "two-level bootstrap (seeds, then images; percentile)"
    return Interval(estimate, float(low), float(high), method, n, min(a.shape[0], b.shape[0]))


def mean_difference(a: ArrayLike, b: ArrayLike, seed: int = 0) -> Interval:
    """Mean of ``a`` minus mean of ``b``, per-image measurements of two models on the same images (e.g.
    C&W minimal norms), each mean over its finite values (NaN: nothing measured on that image, e.g. a
    failed attack): a paired BCa bootstrap over the images."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"a paired mean difference needs one value per image of each: {a.shape} vs {b.shape}")

    def statistic(x: np.ndarray, y: np.ndarray, axis: int) -> np.ndarray:
        with np.errstate(invalid="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # a resample without one finite value: NaN
            return np.nanmean(x, axis=axis) - np.nanmean(y, axis=axis)

    estimate = float(statistic(a, b, axis=0))
    method = "paired bootstrap (BCa), images"
    if math.isnan(estimate):
        return Interval(estimate, estimate, estimate, method, len(a))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", stats.DegenerateDataWarning)  # no spread: handled below
        warnings.simplefilter("ignore", RuntimeWarning)  # BCa's acceleration of a resample without spread
        res = stats.bootstrap(
            (a, b),
            statistic,
            paired=True,
            vectorized=True,
            method="BCa",
            confidence_level=CONFIDENCE,
            n_resamples=RESAMPLES,
            rng=np.random.default_rng(seed),
        )
    boot = res.bootstrap_distribution
    if np.nanmax(boot) - np.nanmin(boot) <= 1e-9 * max(1.0, abs(estimate)):  # every resample alike: no spread
        return Interval(estimate, estimate, estimate, method, len(a))
    ci = res.confidence_interval
    return Interval(estimate, float(ci.low), float(ci.high), method, len(a))


def over_images(statistic: Callable[[np.ndarray], float], n: int, seed: int = 0) -> Interval:
    """A statistic of per-image measurements, given the indices of the images it reads (``np.arange(n)``
    for the run's own value), with a percentile bootstrap over the ``n`` images (for statistics that
    are not means, e.g. an epoch read off accuracy curves, where BCa's smoothness does not hold)."""
    ci = stats.bootstrap(
        (np.arange(n),),
        statistic,
        vectorized=False,
        method="percentile",
        confidence_level=CONFIDENCE,
        n_resamples=RESAMPLES,
        rng=np.random.default_rng(seed),
    ).confidence_interval
    return Interval(float(statistic(np.arange(n))), float(ci.low), float(ci.high), "percentile bootstrap, images", n)


def mcnemar(a: ArrayLike, b: ArrayLike) -> float:
    """Exact McNemar p-value of two models on the same images (one seed each): the images exactly one
    of them gets right, tested against an even split."""
    a, b = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    only_a, only_b = int(np.sum(a & ~b)), int(np.sum(~a & b))
    return 1.0 if only_a + only_b == 0 else stats.binomtest(only_a, only_a + only_b).pvalue


def paired_ratio(numerator: ArrayLike, denominator: ArrayLike, seed: int = 0) -> Interval:
    """The median of the per-round ratios ``numerator[i] / denominator[i]`` of timings taken in the same
    interleaved rounds (a drift of the machine cancels in each), with a percentile bootstrap over the rounds."""
    ratios = np.asarray(numerator, dtype=float) / np.asarray(denominator, dtype=float)
    rng = np.random.default_rng(seed)
    boot = np.median(ratios[rng.integers(0, len(ratios), size=(RESAMPLES, len(ratios)))], axis=1)
    low, high = np.quantile(boot, [(1 - CONFIDENCE) / 2, (1 + CONFIDENCE) / 2])
    return Interval(float(np.median(ratios)), float(low), float(high), f"median of {len(ratios)} interleaved rounds", 0)


def spread(repeats: ArrayLike) -> float:
    """How much repeated measurements disagree, robustly: their interquartile range over their median (the
    companion of a median: one disturbed repeat moves neither; the gate of a timing claim)."""
    r = np.asarray(repeats, dtype=float)
    if not len(r):
        return math.nan
    q1, median, q3 = np.quantile(r, [0.25, 0.5, 0.75])
    return float((q3 - q1) / median)


def highest(intervals: list[Interval]) -> Interval:
    """The largest of several quantities, as one claim reads "every one is below the margin": its
    estimate, low and high are the largest of theirs, so the interval lies below a margin exactly
    when every one does, and above it when at least one does."""
    return _extreme(intervals, max)


def lowest(intervals: list[Interval]) -> Interval:
    """The smallest of several quantities ("every one is above the margin"): see :func:`highest`."""
    return _extreme(intervals, min)


def _extreme(intervals: list[Interval], pick) -> Interval:
    if not intervals:
        raise ValueError("no interval to combine")
    first = intervals[0]
    return Interval(
        pick(i.estimate for i in intervals),
        pick(i.low for i in intervals),
        pick(i.high for i in intervals),
        f"{pick.__name__} of {len(intervals)}: {first.method}",
        min(i.n_images for i in intervals),
        min(i.n_seeds for i in intervals),
    )


def absolute(interval: Interval) -> Interval:
    """The interval of ``|d|`` from that of ``d`` (for "within m points either way")."""
    low = 0.0 if interval.low <= 0 <= interval.high else min(abs(interval.low), abs(interval.high))
    high = max(abs(interval.low), abs(interval.high))
    return Interval(abs(interval.estimate), low, high, interval.method, interval.n_images, interval.n_seeds)
