"""DVC's own views carry the experiments: settings as params, headline metrics named by stage, curves
and the leaderboard as plots from data files (README, "Comparing an experiment with the committed run")."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from lib import stages
from lib.runtime import REPO_ROOT

DVC = str(Path(sys.executable).with_name("dvc"))
GIT = ["git", "-c", "user.email=test@example.org", "-c", "user.name=test"]


def _run(cmd: list[str], cwd: Path, columns: int = 200) -> str:
    env = {**os.environ, "COLUMNS": str(columns), "DVC_NO_ANALYTICS": "1"}
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.fixture()
def repo(tmp_path) -> Path:
    """A git + DVC repository holding the pipeline's definition, its params and its plot data."""
    root = tmp_path / "repo"
    root.mkdir()
    for name in ("dvc.yaml", "params.yaml"):
        shutil.copy(REPO_ROOT / name, root / name)
    shutil.copytree(REPO_ROOT / "profiles", root / "profiles")
    for stage in stages.STAGES.values():
        for plot in stage.plots:
            source = REPO_ROOT / "results" / stage.name / "tables" / f"{plot.table}.csv"
            (root / source.relative_to(REPO_ROOT)).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(source, root / source.relative_to(REPO_ROOT))
    _run(["git", "init", "-q"], root)
    _run([DVC, "init", "-q"], root)
    _run(["git", "add", "-A"], root)
    _run([*GIT, "commit", "-qm", "committed run"], root)
    return root


def test_a_profile_edit_shows_in_dvc_params_diff(repo):
    profile = repo / "profiles" / "p3_single_step_reuse.yaml"
    text = profile.read_text()
    cpu = text.index("\ncpu:")
    edited = re.sub(r"\n  epochs: \d+", "\n  epochs: 99", text[cpu:], count=1)
    profile.write_text(text[:cpu] + edited)
    diff = json.loads(_run([DVC, "params", "diff", "--json"], repo))
    assert diff["profiles/p3_single_step_reuse.yaml"]["cpu.epochs"]["new"] == 99, diff


def test_plots_diff_draws_two_revisions_in_one_chart(repo, tmp_path):
    stage = stages.get("p1_conv_generator_ensemble")
    table = repo / "results" / stage.name / "tables" / f"{stage.plots[0].table}.csv"
    df = pd.read_csv(table)
    df["base"] = df["base"] - 5  # another run's curve
    df.to_csv(table, index=False)
    out = json.loads(_run([DVC, "plots", "diff", "HEAD", "--json", "-o", str(tmp_path / "plots")], repo))
    assert not [e for e in out.get("errors", []) if "/tables/" in e["source"]], out["errors"]  # (figures/ not copied)
    (chart,) = out.get("data", out)[stage.plots[0].title]
    assert {"HEAD", "workspace"} <= set(chart["revisions"]), chart


def test_every_plot_reads_a_table_the_committed_run_wrote():
    for stage in stages.STAGES.values():
        for plot in stage.plots:
            df = pd.read_csv(REPO_ROOT / "results" / stage.name / "tables" / f"{plot.table}.csv")
            assert {plot.x, *plot.y} <= set(df.columns), (stage.name, plot.table, list(df.columns))
            assert len(df) >= 2, (stage.name, plot.table)


def _readme_exp_show() -> list[str]:
    readme = (REPO_ROOT / "README.md").read_text()
    (command,) = re.findall(r"^(dvc exp show --no-pager --drop [^#\n]*?)\s+#", readme, flags=re.M)
    return [a.strip("'") for a in re.findall(r"'[^']*'|\S+", command)]


def test_the_readmes_exp_show_prints_headline_metrics_in_200_columns():
    """The README's exact command, in a 200-column terminal, on this repository: at least five numeric
    metric columns, and no line wider than the terminal."""
    if not (REPO_ROOT / ".git").exists():
        pytest.skip("not a git checkout")  # a source archive: DVC has no revisions to show
    out = _run([DVC if a == "dvc" else a for a in _readme_exp_show()], REPO_ROOT)
    lines = [line for line in out.splitlines() if line.strip()]
    header = next(line for line in lines if "Experiment" in line).split()
    metrics = [c for c in header if re.fullmatch(r"(p\d|compare)\.\w+", c)]
    row = next(line for line in lines if line.split()[:1] in (["workspace"], ["main"], ["master"]))
    numbers = [v for v in row.split() if re.fullmatch(r"-?\d+(\.\d+)?", v)]
    assert len(metrics) >= 5 and len(numbers) >= 5, out
    assert max(len(line) for line in lines) <= 200, out


def test_the_readmes_remote_recipe_shares_a_model_store(tmp_path):
    """README, "Sharing the trained models": `dvc remote add` + `dvc push` in one clone, `dvc pull` in
    another brings a stage's model store back (here a local-folder remote and one stand-in entry)."""
    if not (REPO_ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    first, second, remote = tmp_path / "first", tmp_path / "second", tmp_path / "remote"
    stage = "p5_mnist_gan"
    _run(["git", "clone", "-q", str(REPO_ROOT), str(first)], tmp_path)
    (first / "data" / "prepared").mkdir(parents=True)
    for name in stages.names():  # the train stage's outputs: every stage's store
        (first / "models" / name).mkdir(parents=True)
    (first / "models" / stage / "d-0123.pt").write_bytes(b"trained weights")
    _run([DVC, "commit", "-f", "-q", "train"], first)  # what `dvc repro` records when it trains
    _run([DVC, "remote", "add", "-d", "store", str(remote)], first)
    _run([DVC, "push", "-q", "train"], first)
    shutil.copytree(first, second, ignore=shutil.ignore_patterns("models", "cache"))
    _run([DVC, "pull", "-q", "train"], second)
    assert (second / "models" / stage / "d-0123.pt").read_bytes() == b"trained weights"
