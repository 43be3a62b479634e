"""make bench's training-throughput measurement (the benchmark itself is not a timed test)."""

from __future__ import annotations

from lib import bench
from lib import plan as P
from lib.runtime import Acceleration


def test_training_throughput_runs_the_training_loop_and_restores_the_gpu_switch():
    model = P.Model("mnist_cnn", (1, 28, 28), 10, (("width", 4), ("hidden", 8)))
    before = Acceleration.fast
    rate = bench.training_throughput(model, batch_size=8, batches=2, fast=False)
    assert rate > 0 and Acceleration.fast == before


def test_every_profile_model_kind_is_benchmarked_once_per_batch_size(monkeypatch, tmp_path):
    seen = []
    monkeypatch.setattr(bench, "training_throughput", lambda model, batch, **_: seen.append((model, batch)) or 100.0)
    monkeypatch.setattr(bench, "OUT", tmp_path)
    df = bench.throughput("cpu")
    kinds = {(m.model, m.batch_size) for plan in P.plans("cpu") for m in plan.models}
    assert sorted(seen, key=str) == sorted(kinds, key=str) and len(df) == len(kinds)
    assert (tmp_path / "tables" / "throughput_cpu.md").exists()
