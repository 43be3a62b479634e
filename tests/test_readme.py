"""The README's results section is generated from results/ and the committed README matches it."""

from __future__ import annotations

import re

from lib import readme
from lib.runtime import REPO_ROOT


def test_committed_readme_results_section_is_regenerated_from_the_results_files():
    committed = (REPO_ROOT / "README.md").read_text()
    assert readme.section(committed) == readme.render(), "README results section is stale: run `python -m lib.readme`"


def test_section_reflects_the_files_and_says_when_a_stage_has_none(tmp_path):
    (tmp_path / "p5_mnist_gan" / "tables").mkdir(parents=True)
    (tmp_path / "p5_mnist_gan" / "tables" / "headline.csv").write_text(
        "metric,paper,ours,delta\nD clean,98.4,97.123456,-1.3\n"
    )
    (tmp_path / "p5_mnist_gan" / "details.json").write_text(
        '{"meta": {"profile": "cpu", "reduced": true, "device": "CPU: X", "wall_time_s": 120}}'
    )
    (tmp_path / "p5_mnist_gan" / "tables" / "robustness.csv").write_text(
        "classifier,PGD-40 %,AutoAttack %\nclean D,1.25,0.5\n"
    )
    text = readme.render(tmp_path)
    assert "| D clean  |    98.4 |   97.1 |    -1.3 |" in text
    assert (
        "| clean D      |       1.25 |          0.500 |" in text and "p5 — robustness" in text
    )  # the robustness table follows
    assert (
        text.count("No results yet: run `dvc repro p3_single_step_reuse`") == 1
    )  # once per stage  # at the paper's precision, delta signed
    (tmp_path / "p5_mnist_gan" / "training.json").write_text(
        '{"models": [{"name": "D", "loaded": true}, {"name": "G", "loaded": false}]}'
    )
    text = readme.render(tmp_path)
    assert "REDUCED" in text and "CPU: X" in text
    # 2 models, 1 trained, 1 loaded; their training time (none recorded here: 0); the hardware
    assert re.search(r"\| p5_mnist_gan \| cpu +\| +2 \| +1 \| +1 \| +0 \| CPU: X +\|", text)
    assert "No results yet: run `dvc repro p2_pgn`" in text
    page = tmp_path / "README.md"
    page.write_text(f"intro\n{readme.START}\nold\n{readme.END}\noutro\n")
    assert readme.update(page, tmp_path) and not readme.update(page, tmp_path)
    assert (
        page.read_text().startswith("intro\n")
        and page.read_text().endswith("\noutro\n")
        and "old" not in page.read_text()
    )


def test_verdict_counts_per_stage_and_in_total(tmp_path):
    import json

    for stage, verdicts in {
        "p5_mnist_gan": ["held", "not testable", "not testable"],
        "p3_single_step_reuse": ["did not hold", "held"],
    }.items():
        (tmp_path / stage).mkdir()
        (tmp_path / stage / "claims.json").write_text(
            json.dumps([{"claim": "c", "verdict": v, "gates": []} for v in verdicts])
        )
    text = readme.verdict_counts(tmp_path)

    def row(paper: str, answer: str, counts: str) -> str:  # the paper (its authors, short) first
        return rf"\| {re.escape(paper)} +\| {answer} +\| +" + r" \| +".join(counts.split())

    assert re.search(row("p3 — Liu, Khalil, Khreishah", "replicates in part", "2 1 1 0"), text)
    assert re.search(row("p5 — Xia & Liu", "replicates in part", "3 1 0 0"), text)
    assert re.search(r"\| \*\*total\*\* +\| +\| +5 \| +2 \| +1 \| +0 \|", text)
    assert (
        "- **p3** Liu, Khalil, Khreishah, *Using Intuition from Empirical Properties to Simplify Adversarial "
        "Training Defense* (DSN-W 2019; [arXiv:1906.11729](https://arxiv.org/abs/1906.11729)): **replicates in part** "
        "— decisive claim: c: ours — (did not hold)"
    ) in text
    assert "No `claims.json` yet: p1_conv_generator_ensemble, p2_pgn, p4_resnet_transfer_augmentation, compare." in text
    assert readme.render(tmp_path).index("### Answers") < readme.render(tmp_path).index("### p1")
    assert readme.verdict_counts(tmp_path / "none") == ""
