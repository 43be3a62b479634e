"""Interleaved timing rounds (lib.timing): the order the runs are timed in, and the warm-up left out."""

from lib.timing import interleaved, per_batch
from lib.train import TrainResult


def test_every_run_is_timed_once_a_round_after_a_discarded_warm_up():
    calls: list[str] = []

    def run(name: str, seconds: list[float]):
        def once() -> float:
            calls.append(name)
            return seconds[len([c for c in calls if c == name]) - 1]

        return once

    timings = interleaved({"a": run("a", [9.0, 1.0, 2.0, 3.0]), "b": run("b", [8.0, 4.0, 5.0, 6.0])}, rounds=3)
    assert calls == ["a", "b"] * 4  # the warm-up round, then three rounds, each method once a round
    assert timings == {"a": [1.0, 2.0, 3.0], "b": [4.0, 5.0, 6.0]}  # the warm-up's 9 and 8 are not kept


def test_seconds_per_batch_read_from_the_last_epoch():
    result = TrainResult(None, [{"seconds": 30.0}, {"seconds": 2.0}], None)
    assert per_batch(result, 4) == 0.5
