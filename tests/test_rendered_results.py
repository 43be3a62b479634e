"""The committed executed notebooks read as results, not as a training log (#16): almost no stderr
(no progress bars), and no machine's absolute path anywhere under results/."""

from __future__ import annotations

import json
import re

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
    offenders = [str(f.relative_to(REPO_ROOT)) for f in sorted(RESULTS.rglob("*"))
                 if f.is_file() and f.suffix in {".ipynb", ".html", ".json", ".md", ".csv"}
                 and MACHINE_PATH.search(f.read_text(errors="replace"))]
    assert not offenders, offenders
