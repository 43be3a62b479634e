"""Paper-vs-ours tables and atomic result writing."""

from __future__ import annotations

import json
import math
import re

import pandas as pd
import pytest

from lib.errors import ConfigError
from lib.report import (
    ResultsWriter,
    Table,
    accuracy_curve,
    comparison,
    format_number,
    formatted,
    printed_decimals,
    widen,
)


def test_comparison_delta_and_wide_layout():
    long = comparison(
        [
            {"defence": "A", "metric": "acc", "paper": 90.0, "ours": 85.0},
            {"defence": "A", "metric": "sec", "paper": None, "ours": 2.0},
            {"defence": "B", "metric": "acc", "paper": 80.0, "ours": 82.5},
            {"defence": "B", "metric": "sec", "paper": 3.0, "ours": 1.0},
        ],
        ["defence"],
    )
    assert long["delta"].tolist()[0] == -5.0 and math.isnan(long["delta"].tolist()[1])
    wide = widen(long, ["defence"])
    assert list(wide.columns) == ["defence", "acc paper", "acc ours", "acc delta", "sec paper", "sec ours", "sec delta"]
    assert wide["defence"].tolist() == ["A", "B"] and wide.loc[1, "acc delta"] == 2.5


def test_results_writer_writes_tables_and_metrics_with_setting(tmp_path):
    out = ResultsWriter(tmp_path)
    meta = {
        "profile": "cpu",
        "reduced": True,
        "dataset": "mnist5k",
        "samples": {"train": 10},
        "seed": 0,
        "device": "CPU",
        "torch": "x",
    }
    long = comparison([{"k": "a", "metric": "m", "paper": 1.0, "ours": 2.0}], ["k"])
    out.table("t", long, "Caption", meta)
    text = (tmp_path / "tables" / "t.md").read_text()
    assert "REDUCED run" in text and "Profile `cpu`" in text and "train 10" in text
    line = out.metrics(
        {"acc_x": 97.4, "gap_y": float("nan")}, {"results": {"x": {"y": 0.5}}, "config": {"lr": 0.1}}, meta
    )
    assert line.count("\n") == 0 and "2 headline numbers" in line
    assert json.loads((tmp_path / "metrics.json").read_text()) == {"acc_x": 97.4, "gap_y": None}  # flat numbers only
    details = json.loads((tmp_path / "details.json").read_text())
    assert (
        details["results"] == {"x": {"y": 0.5}}
        and details["config"] == {"lr": 0.1}
        and details["meta"]["profile"] == "cpu"
    )
    assert not list(tmp_path.rglob(".*.tmp"))


@pytest.mark.parametrize("headline", [{"nested": {"a": 1.0}}, {"label": "x"}, {f"m{i}": 1.0 for i in range(21)}])
def test_metrics_refuse_what_dvc_cannot_show(tmp_path, headline):
    with pytest.raises(ConfigError):
        ResultsWriter(tmp_path).metrics(headline, {}, {})
    assert not (tmp_path / "metrics.json").exists()


def test_numbers_display_at_the_papers_precision():
    assert (
        printed_decimals([93.3, 99.08, None, float("nan")]) == 2
        and printed_decimals([]) == 1
        and printed_decimals([70.0]) == 1
        and printed_decimals([100 * 0.2934, 100 * 0.0939])
        == 2  # a paper's fraction in percent: 29.34, not 29.340000000000003
    )
    assert [format_number(v) for v in (95.800000001, 2.4841, 0.0313725, 400.0, float("nan"), 1e-7)] == [
        "95.8",
        "2.48",
        "0.0314",
        "400",
        "",
        "0.0000",
    ]
    assert formatted(
        pd.DataFrame({"acc": [0.0, 12.2, 6.2], "rho": [0.5, 0.031, 0.7], "n": [400.0, 3.0, 1.0]})
    ).values.tolist() == [["0.0", "0.500", "400"], ["12.2", "0.031", "3"], ["6.2", "0.700", "1"]]
    assert format_number(-4.1, 2, signed=True) == "-4.10" and format_number(10.04, 2, signed=True) == "+10.04"
    wide = widen(
        comparison(
            [
                {"d": "A", "metric": "acc", "paper": 93.3, "ours": 95.800001},
                {"d": "B", "metric": "acc", "paper": 99.08, "ours": 46.2},
            ],
            ["d"],
        ),
        ["d"],
    )
    text = formatted(wide)
    assert text["acc ours"].tolist() == ["95.80", "46.20"] and text["acc delta"].tolist() == ["+2.50", "-52.88"]
    # a metric the paper has no value for (p5's 'FGSM at pixel eps'): ours by its magnitude, not one decimal
    none = widen(
        comparison(
            [
                {"d": "A", "metric": "x", "paper": None, "ours": 0.669},
                {"d": "B", "metric": "x", "paper": None, "ours": 0.047},
            ],
            ["d"],
        ),
        ["d"],
    )
    assert formatted(none)["x ours"].tolist() == ["0.669", "0.047"]


def test_wide_tables_split_into_parts_that_fit_the_page():
    rows = [
        {"defence": d, "metric": f"metric number {m}", "paper": 90.0 + m, "ours": 80.123456}
        for d in ("A", "B")
        for m in range(12)
    ]
    table = Table(widen(comparison(rows, ["defence"]), ["defence"]), "Caption")
    md = table.markdown(width=120)
    parts = md.split("*Part ")[1:]
    assert md.startswith("**Caption**") and len(parts) > 1
    for part in parts:
        header = part.split("\n")[2]
        assert header.startswith("| defence")  # the row key repeats in every part
        assert all(
            h.strip().rsplit(" ", 1)[0] == header.split("|")[2].strip().rsplit(" ", 1)[0]
            for h in header.split("|")[2:5]
        )  # a metric's paper / ours / delta stay together
    assert not re.search(r"\d\.\d{5,}", md) and "| 80.1 |" in md.replace("  ", "")


def test_per_image_arrays_stay_out_of_details_json(tmp_path):
    import json

    import numpy as np

    from lib.report import ResultsWriter

    details = {"proposed": {"bim10": 0.85, "correct": {"bim10": np.ones(5, dtype=np.int8)}}, "flags": np.zeros(3)}
    ResultsWriter(tmp_path).metrics({"a": 1.0}, details, {})
    written = json.loads((tmp_path / "details.json").read_text())
    assert written["proposed"] == {"bim10": 0.85} and "flags" not in written


def test_a_curves_error_bars_are_the_exact_interval_of_each_point():
    """0 of 10 right: the bar runs from 0 to Clopper-Pearson's 30.85%; the line is in percent."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    bars = accuracy_curve(ax, [0.0, 1.0], [0.0, 1.0], 10, label="model")
    line, _, (vertical,) = bars.lines
    assert list(line.get_ydata()) == [0.0, 100.0]
    (low0, high0), (low1, high1) = (segment[:, 1] for segment in vertical.get_segments())
    assert (low0, high1) == (0.0, 100.0)
    assert high0 == pytest.approx(100 * (1 - 0.025 ** (1 / 10))) and low1 == pytest.approx(100 * 0.025 ** (1 / 10))
    plt.close(fig)
