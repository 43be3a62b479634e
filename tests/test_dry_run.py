"""The full-size dry run: a stage's `paper` notebook end to end on synthetic data of the real
sizes, loops cut short, into build/dry-run/ (never results/); it trains exactly the planned models.

STAGES: the stages whose dry run fits the test budget on a 2-core CPU, p5 at the paper's batch
sizes, p1 and compare at batch 16 (BATCH), every evaluation set cut to 8 examples (EXAMPLES). p3
(the cpu profile's model and data shapes at full size; 28 s), p2 (52 models, several minutes even
at batch 16) and p4 (27 ResNets up to ResNet-101 at 64x64) pass by hand (`make dry-run BATCH=16`,
README) but exceed it; p2's and p4's one-batch paper-profile tests stay in their method test files."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch

from lib import attacks as A
from lib import data as D
from lib import dryrun
from lib.attacks.gradient import iterates
from lib.errors import ConfigError
from lib.pipeline import run_stage
from lib.runtime import REPO_ROOT, DryRun

BATCH = {"p1_conv_generator_ensemble": 16, "compare": 16}  # a stage's batch-size cut for this CPU (none: the paper's)
EXAMPLES = 8  # examples per evaluation set (the dry run's default is 64): the code path is the same


def _tree_digest(folder) -> str:
    h = hashlib.sha256()
    for f in sorted(folder.rglob("*")) if folder.exists() else []:
        if f.is_file():
            h.update(str(f.relative_to(folder)).encode() + f.read_bytes())
    return h.hexdigest()


STAGES = ["p5_mnist_gan", "p1_conv_generator_ensemble", "compare"]


@pytest.mark.parametrize("stage", STAGES)
def test_the_paper_profile_runs_end_to_end_on_full_size_synthetic_data(stage):
    committed = _tree_digest(REPO_ROOT / "results" / stage)
    out = run_stage(stage, "paper", dry_run=True, batch_size=BATCH.get(stage), examples=EXAMPLES)
    assert out == dryrun.ROOT / "results" / stage
    assert _tree_digest(REPO_ROOT / "results" / stage) == committed  # results/ never touched
    for name in ("metrics.json", "details.json", "claims.md", f"{stage}.ipynb", f"{stage}.html"):
        assert (out / name).stat().st_size > 0, name
    assert list((out / "tables").glob("*.csv")) and list((out / "figures").glob("*.png"))
    training = json.loads((out / "training.json").read_text())
    trained = [m["name"] for m in training["models"]]
    assert not any(m["loaded"] for m in training["models"])  # a dry run trains from scratch
    assert sorted(trained) == sorted(m["name"] for m in training["plan"]["models"])  # the plan's units: what runs
    assert training["plan"]["profile"] == "paper" and training["wall_time_s"] > 0
    meta = json.loads((out / "details.json").read_text())["meta"]
    assert meta["profile"] == "paper"
    notebook = (out / f"{stage}.ipynb").read_text()
    assert "DRY RUN" in notebook and "synthetic" in notebook


def test_synthetic_data_has_the_real_sizes():
    ds = dryrun.synthetic("cifar100")
    assert (len(ds.train), len(ds.test), ds.shape, ds.num_classes) == (50_000, 10_000, (3, 32, 32), 100)
    assert ds.train.x.dtype.is_floating_point is False and set(ds.train.y.tolist()) == set(range(100))
    assert dryrun.SIZES["mnist"][:2] == (60_000, 10_000) and dryrun.SIZES["cats_vs_dogs"][2] == (3, 64, 64)


def test_the_dry_run_changes_only_evaluation_sizes_and_curve_points():
    params = {
        "pgd_steps": 50,
        "pgd_restarts": 2,
        "bim_iterations": [1, 2, 3],
        "n_rho": 1000,
        "epochs": 200,
        "batch_size": 128,
        "lr": 0.1,
    }
    assert dryrun.overrides(params) == {"pgd_restarts": 1, "bim_iterations": [1, 2], "n_rho": DryRun.examples_cap}
    assert dryrun.overrides(params, batch_size=8)["batch_size"] == 8


def test_the_dry_run_cuts_every_iterative_attack_to_two_iterations():
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    x, y = torch.rand(5, 1, 2, 2), torch.tensor([0, 1, 2, 0, 1])
    calls = []
    model.register_forward_hook(lambda *_: calls.append(1))
    try:
        DryRun.configure(True)
        list(iterates(model, x, y, eps=0.1, steps=50, step_size=0.01))
        assert len(calls) == 2
        calls.clear()
        A.cw_l2(model, x, y, steps=100, binary_steps=9)
        assert len(calls) <= 1 + 2 * 2  # one class-count probe, then 2 x 2 iterations
    finally:
        DryRun.configure(False)
    calls.clear()
    list(iterates(model, x, y, eps=0.1, steps=5, step_size=0.01))
    assert len(calls) == 5  # a real run is untouched


def test_examples_sets_how_many_examples_every_evaluation_keeps(monkeypatch):
    monkeypatch.setenv(DryRun.EXAMPLES, "8")
    split = dryrun.synthetic("mnist5k").test
    try:
        DryRun.configure(True)
        assert len(D.tensors(split)[1]) == 8 and dryrun.overrides({"n_rho": 1000}) == {"n_rho": 8}
        assert "8 examples per evaluation set" in dryrun.cuts()
    finally:
        DryRun.configure(False)
    assert len(D.tensors(split)[1]) == len(split)


@pytest.mark.parametrize("flag", [{"examples": 8}, {"batch_size": 8}])
def test_dry_run_sizes_are_refused_outside_a_dry_run(flag):
    with pytest.raises(ConfigError, match="dry run only"):
        run_stage("p5_mnist_gan", "smoke", **flag)
