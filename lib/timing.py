"""Timing claims' measurements: the compared training steps timed in interleaved rounds, in one process.

A ratio of two methods' costs read from their training runs compares epochs run minutes apart; a
machine whose speed drifts in between (another tenant, a frequency change) moves the ratio and the
spread of each side's repeats. Timing every method once per round, round after round, makes a drift
hit them alike: the per-round ratios cancel it, and their spread is what a timing claim's gate reads.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from lib.train import TrainResult


def interleaved(runs: Mapping[str, Callable[[], float]], rounds: int) -> dict[str, list[float]]:
    """Each of ``runs`` (a callable returning the seconds it measured) once as a warm-up (discarded), then
    ``rounds`` rounds of every run once, in order: name -> its ``rounds`` timings."""
    for run in runs.values():
        run()
    timings: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            timings[name].append(run())
    return timings


def per_batch(result: TrainResult, batches: int) -> float:
    """Seconds per batch of a timing run: its last epoch's wall time over the ``batches`` it ran."""
    return result.history[-1]["seconds"] / batches
