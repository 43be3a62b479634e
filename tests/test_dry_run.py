"""The full-size dry run: a stage's `paper` notebook end to end on synthetic data of the real
sizes, loops cut short, into build/dry-run/ (never results/); it trains exactly the planned models.

STAGES: p5 runs here at the paper's own batch sizes (about 30 s). The other stages' dry runs
passed by hand (p1, p2) but take 5-10 minutes each on a 2-core CPU even at batch 16, beyond the
test budget; until they are made faster (#15), their one-batch paper-profile tests stay in their
method test files."""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter

import pytest

from lib import dryrun
from lib.pipeline import run_stage
from lib.runtime import REPO_ROOT

BATCH: dict[str, int] = {}  # a stage's batch-size cut for this CPU (none: the paper's)
EXAMPLES: dict[str, int] = {}


def _tree_digest(folder) -> str:
    h = hashlib.sha256()
    for f in sorted(folder.rglob("*")) if folder.exists() else []:
        if f.is_file():
            h.update(str(f.relative_to(folder)).encode() + f.read_bytes())
    return h.hexdigest()


def _masked(names) -> Counter:
    """Names with their numbers masked (p5's eps in pixel units depend on the data)."""
    return Counter(re.sub(r"\d+(\.\d+)?", "#", n) for n in names)


STAGES = ["p5_mnist_gan"]


@pytest.mark.parametrize("stage", STAGES)
def test_the_paper_profile_runs_end_to_end_on_full_size_synthetic_data(stage):
    committed = _tree_digest(REPO_ROOT / "results" / stage)
    out = run_stage(stage, "paper", dry_run=True, batch_size=BATCH.get(stage), examples=EXAMPLES.get(stage, 256))
    assert out == dryrun.ROOT / "results" / stage
    assert _tree_digest(REPO_ROOT / "results" / stage) == committed  # results/ never touched
    for name in ("metrics.json", "claims.md", f"{stage}.ipynb", f"{stage}.html"):
        assert (out / name).stat().st_size > 0, name
    assert list((out / "tables").glob("*.csv")) and list((out / "figures").glob("*.png"))
    training = json.loads((out / "training.json").read_text())
    trained = [m["name"] for m in training["models"]]
    assert not any(m["loaded"] for m in training["models"])  # a dry run trains from scratch
    assert _masked(trained) == _masked(m["name"] for m in training["plan"]["models"])  # the plan lists what runs
    assert training["plan"]["profile"] == "paper" and training["wall_time_s"] > 0
    meta = json.loads((out / "metrics.json").read_text())["meta"]
    assert meta["profile"] == "paper"
    notebook = (out / f"{stage}.ipynb").read_text()
    assert "DRY RUN" in notebook and "synthetic" in notebook


def test_synthetic_data_has_the_real_sizes():
    ds = dryrun.synthetic("cifar100")
    assert (len(ds.train), len(ds.test), ds.shape, ds.num_classes) == (50_000, 10_000, (3, 32, 32), 100)
    assert ds.train.x.dtype.is_floating_point is False and set(ds.train.y.tolist()) == set(range(100))
    assert dryrun.SIZES["mnist"][:2] == (60_000, 10_000) and dryrun.SIZES["cats_vs_dogs"][2] == (3, 64, 64)


def test_the_dry_run_changes_only_evaluation_iterations_and_sizes():
    params = {"pgd_steps": 50, "cw_binary_steps": 9, "n_rho": 1000, "epochs": 200, "batch_size": 128, "lr": 0.1}
    assert dryrun.overrides(params, examples=256) == {"pgd_steps": 2, "cw_binary_steps": 1, "n_rho": 256}
    assert dryrun.overrides(params, examples=256, batch_size=8)["batch_size"] == 8
