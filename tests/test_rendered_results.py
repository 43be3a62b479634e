"""The committed executed notebooks read as results, not as a training log (#16): almost no stderr
(no progress bars), no machine's absolute path anywhere under results/, tables at display
precision, verdicts first, and DVC metrics that are headline numbers only."""

from __future__ import annotations

import base64
import json
import re

from lib.report import metric_prefix
from lib.runtime import REPO_ROOT

RESULTS = REPO_ROOT / "results"
MACHINE_PATH = re.compile(r"(?<![\w.])/(tmp|home|root|work)/")


def _stderr_lines(notebook) -> int:
    cells = json.loads(notebook.read_text())["cells"]
    outputs = [o for c in cells for o in c.get("outputs", []) if o.get("name") == "stderr"]
    return sum("".join(o["text"]).count("\n") for o in outputs)


def test_the_executed_notebooks_carry_at_most_twenty_stderr_lines_together():
    notebooks = sorted(RESULTS.glob("*/*.ipynb"))
    assert len(notebooks) >= 6
    lines = {nb.parent.name: _stderr_lines(nb) for nb in notebooks}
    assert sum(lines.values()) <= 20, lines


def test_no_file_under_results_holds_a_machine_path():
    offenders = [
        str(f.relative_to(REPO_ROOT))
        for f in sorted(RESULTS.rglob("*"))
        if f.is_file()
        and f.suffix in {".ipynb", ".html", ".json", ".md", ".csv"}
        and MACHINE_PATH.search(f.read_text(errors="replace"))
    ]
    assert not offenders, offenders


TABLE_ROW = re.compile(r"^\|.*\|$", re.M)
LONG_DECIMAL = re.compile(r"\d\.\d{5,}")
STAGES = (
    "p1_conv_generator_ensemble",
    "p2_pgn",
    "p3_single_step_reuse",
    "p4_resnet_transfer_augmentation",
    "p5_mnist_gan",
    "compare",
)


def _displayed(notebook) -> list[str]:
    """Every rich output of a notebook as the reader sees it (Markdown / HTML / plain text)."""
    cells = json.loads(notebook.read_text())["cells"]
    return [
        "".join(o["data"].get("text/markdown") or o["data"].get("text/html") or o["data"].get("text/plain", ""))
        for c in cells
        for o in c.get("outputs", [])
        if "data" in o
    ]


def test_displayed_tables_show_at_most_four_decimals_and_no_raw_dataframe():
    for notebook in sorted(RESULTS.glob("*/*.ipynb")):
        shown = _displayed(notebook)
        rows = [row for text in shown for row in TABLE_ROW.findall(text)]
        assert rows, f"{notebook.name} displays no table"
        assert not [r for r in rows if LONG_DECIMAL.search(r)], notebook.name
        assert not [t for t in shown if "<table" in t or "rows ×" in t], f"{notebook.name} displays a raw DataFrame"
        assert not [t for t in shown if t.lstrip().startswith(("{", "["))], f"{notebook.name} dumps a dict or list"


def test_each_notebook_opens_with_its_verdicts():
    """The first output: the paper, the setting line, the one-line answer, then one table row per claim
    (its verdict beside it); claims.md keeps every gate."""
    for stage in STAGES:
        cells = json.loads((RESULTS / stage / f"{stage}.ipynb").read_text())["cells"]
        first_output = next(i for i, c in enumerate(cells) if c.get("outputs"))
        summary = "".join("".join(o.get("data", {}).get("text/markdown", "")) for o in cells[first_output]["outputs"])
        assert summary.startswith("## Verdicts of this run") and "Profile `" in summary, stage
        assert "**Paper:**" in summary and "**Answer:** **" in summary, stage
        assert "| claim | paper | ours (95% interval) | verdict |" in summary, stage
        for record in json.loads((RESULTS / stage / "claims.json").read_text()):
            rows = [line for line in summary.splitlines() if line.startswith("|")]
            row = next(line for line in rows if record["claim"].replace("|", "\\|") in line)
            assert f"**{record['verdict']}**" in row, (stage, record["claim"])


def test_the_html_opens_with_the_verdicts_and_hides_parameters_and_setup_code():
    for stage in STAGES:
        html = (RESULTS / stage / f"{stage}.html").read_text()
        assert "build/smoke/" not in html and not re.search(rf"results/\.{stage}(\.\d+)?\.tmp", html), stage
        assert "StageRun(" not in html and "Effective configuration" in html, stage
        assert html.index("Verdicts of this run") < html.index("The method and this replication"), stage
        assert not re.search(r"<p>\s*\|[^<]*\|", html), f"{stage}: a Markdown table rendered as raw text"


def test_dvc_metrics_hold_a_few_flat_headline_numbers_and_no_config():
    for stage in STAGES:
        metrics = json.loads((RESULTS / stage / "metrics.json").read_text())
        prefix = metric_prefix(stage)  # names unique across stages: DVC's views label columns by name alone
        assert all(k.startswith(prefix) for k in metrics), stage
        own = [k for k in metrics if not k.removeprefix(prefix).startswith("claims_")]
        assert 0 < len(own) <= 20 and len(metrics) - len(own) <= 5, stage  # the stage's numbers, then the claim counts
        assert all(isinstance(v, (int, float)) or v is None for v in metrics.values()), stage  # flat: no nesting
        details = json.loads((RESULTS / stage / "details.json").read_text())
        assert {"meta", "config", "results"} <= details.keys(), stage
        assert not set(metrics) & set(details["config"]), stage


def test_every_figure_file_is_the_one_its_notebook_shows():
    """No stale figure: each PNG under figures/ is, byte for byte, an image the executed notebook displays,
    and the notebook displays no figure that is not there."""
    for stage in STAGES:
        cells = json.loads((RESULTS / stage / f"{stage}.ipynb").read_text())["cells"]
        shown = [
            o["data"]["image/png"].strip()
            for c in cells
            for o in c.get("outputs", [])
            if "image/png" in o.get("data", {})
        ]
        files = {f.name: base64.b64encode(f.read_bytes()).decode() for f in (RESULTS / stage / "figures").glob("*.png")}
        assert files, stage
        assert not [name for name, data in files.items() if data not in shown], (
            f"{stage}: a figure file the notebook does not show"
        )
        assert len(shown) == len(files), f"{stage}: {len(shown)} figures shown, {len(files)} files"


def test_printed_lines_fit_the_page_so_no_word_is_broken():
    """The run's log lines (stdout) stay under the width a 1,300-pixel page shows without breaking a word;
    prose is Markdown, which the browser wraps between words."""
    for stage in STAGES:
        cells = json.loads((RESULTS / stage / f"{stage}.ipynb").read_text())["cells"]
        printed = "".join("".join(o["text"]) for c in cells for o in c.get("outputs", []) if o.get("name") == "stdout")
        long = [line for line in printed.splitlines() if len(line) > 120]
        assert not long, (stage, long[:3])


def test_the_readme_gives_each_papers_answer_as_its_notebook_does():
    """One formatter: the README's answer line of each paper is, character for character, its notebook's."""
    readme = (REPO_ROOT / "README.md").read_text()
    for stage in STAGES:
        cells = json.loads((RESULTS / stage / f"{stage}.ipynb").read_text())["cells"]
        first = next(c for c in cells if c.get("outputs"))
        summary = "".join("".join(o.get("data", {}).get("text/markdown", "")) for o in first["outputs"])
        answer = next(line for line in summary.splitlines() if line.startswith("**Answer:**")).removeprefix(
            "**Answer:** "
        )
        bullet = next(line for line in readme.splitlines() if line.startswith(f"- **{stage.split('_')[0]}** "))
        assert bullet.endswith(f": {answer}"), (stage, bullet, answer)
