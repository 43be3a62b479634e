"""Paper-vs-ours tables and atomic result writing."""

from __future__ import annotations

import json
import math

from lib.report import ResultsWriter, comparison, widen


def test_comparison_delta_and_wide_layout():
    long = comparison([
        {"defence": "A", "metric": "acc", "paper": 90.0, "ours": 85.0},
        {"defence": "A", "metric": "sec", "paper": None, "ours": 2.0},
        {"defence": "B", "metric": "acc", "paper": 80.0, "ours": 82.5},
        {"defence": "B", "metric": "sec", "paper": 3.0, "ours": 1.0},
    ], ["defence"])
    assert long["delta"].tolist()[0] == -5.0 and math.isnan(long["delta"].tolist()[1])
    wide = widen(long, ["defence"])
    assert list(wide.columns) == ["defence", "acc paper", "acc ours", "acc delta", "sec paper", "sec ours", "sec delta"]
    assert wide["defence"].tolist() == ["A", "B"] and wide.loc[1, "acc delta"] == 2.5


def test_results_writer_writes_tables_and_metrics_with_setting(tmp_path):
    out = ResultsWriter(tmp_path)
    meta = {"profile": "cpu", "reduced": True, "dataset": "mnist5k", "samples": {"train": 10}, "seed": 0, "device": "CPU", "torch": "x"}
    long = comparison([{"k": "a", "metric": "m", "paper": 1.0, "ours": 2.0}], ["k"])
    out.table("t", long, "Caption", meta)
    text = (tmp_path / "tables" / "t.md").read_text()
    assert "REDUCED run" in text and "Profile `cpu`" in text and "train 10" in text
    out.metrics({"x": float("nan")}, meta)
    blob = json.loads((tmp_path / "metrics.json").read_text())
    assert blob["x"] is None and blob["meta"]["profile"] == "cpu"
    assert not list(tmp_path.rglob(".*.tmp"))
