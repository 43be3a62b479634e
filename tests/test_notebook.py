"""What every notebook does around its stage: the run's log folded under a one-line count."""

from __future__ import annotations

from lib.notebook import folded


def test_the_run_log_folds_under_a_count_of_what_it_did():
    log = "\n".join(
        [
            "base: loaded, 13 epochs, final val acc 86.4% (trained in 45 s)",
            "proposed: trained in 428 s, 10 epochs",
            "base: evaluated in 1 s",
        ]
    )
    block = folded(log)
    assert block.startswith("<details><summary>Run log: 1 models loaded from the store, 1 trained, 1 evaluations")
    assert "```text\n" + log + "\n```" in block and block.endswith("</details>")
    assert "(nothing printed)" in folded("")
