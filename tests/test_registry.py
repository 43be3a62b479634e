"""The registry: dvc.yaml is generated from it, each stage depends on what it imports, and a sixth paper is
four files and one registry line (a toy stage, registered at run time, runs end to end through lib.pipeline)."""

from __future__ import annotations

import json
import textwrap

import nbformat
import pytest
import yaml

from lib import dvcfile, stages
from lib.params import checked_parameters
from lib.pipeline import OUTPUTS, run_stage
from lib.plan import plan_stage
from lib.runtime import REPO_ROOT

DVC = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())["stages"]


def test_dvc_yaml_is_the_one_generated_from_the_registry():
    assert (REPO_ROOT / "dvc.yaml").read_text() == dvcfile.render(), "run `python -m lib.dvcfile` and commit dvc.yaml"
    assert list(DVC) == ["data", "train", *stages.names(), "readme"]
    assert {f"models/{name}" for name in stages.names()} == {next(iter(o)) for o in DVC["train"]["outs"]}
    assert "models/p5_mnist_gan" in DVC["p5_mnist_gan"]["deps"]  # the notebook loads what train trained


def test_a_stage_depends_on_the_modules_its_code_imports_and_no_other_paper():
    p5 = DVC["p5_mnist_gan"]["deps"]
    assert "lib/stages/p5_mnist_gan.py" in p5 and "lib/attacks/autoattack.py" in p5 and "lib/notebook.py" in p5
    assert not [d for d in p5 if d.startswith("lib/stages/p") and d != "lib/stages/p5_mnist_gan.py"]
    assert "lib/crosscheck.py" in DVC["compare"]["deps"]  # foolbox's cross-check: compare's only


def test_the_closure_follows_imports_inside_functions(tmp_path):
    assert "lib/plan.py" in dvcfile.closure(["lib.pipeline"])  # imported inside stage_plan()


def test_an_unknown_stage_names_the_registered_ones():
    with pytest.raises(Exception, match="unknown stage 'p9'; notebooks: compare, p1_conv_generator_ensemble"):
        stages.get("p9")


# --- a sixth paper: four files and one registry line ---------------------------------------------------------

METHOD = '''
"""Toy method: FGSM adversarial training (Goodfellow et al. 2015), the algorithm only."""
import torch.nn.functional as F

from lib import attacks as A


def fgsm_step(model, opt, x, y, eps: float) -> float:
    """One step of training on FGSM's examples of the batch."""
    x_adv = A.fgsm(model, x, y, eps=eps)
    opt.zero_grad(set_to_none=True)
    loss = F.cross_entropy(model(x_adv), y)
    loss.backward()
    opt.step()
    return float(loss)
'''

STAGE = '''
"""Toy stage: FGSM-AT of a small CNN, one claim."""
from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import torch

import lib.data as D
import lib.models as M
import lib.plan as P
import lib.units as U
from lib import attacks as A
from lib import claims as C
from lib.cache import cached
from lib.evaluate import accuracy, robust_accuracy
from lib.stages import Result

import toy_method


@dataclass
class Config:
    profile: str = "paper"
    dataset: str = "mnist5k"
    n_train: int | None = None
    n_test: int | None = None
    epochs: int = 10
    eps: float = 0.3
    seed: int = 0

    def validate(self) -> Config:
        D.check_name(self.dataset)
        return self


def prepare(cfg: Config, data_dir: str):
    ds = D.load(cfg.dataset, data_dir)
    return ds, D.tensors(D.subset(ds.train, cfg.n_train, cfg.seed)), D.tensors(D.subset(ds.test, cfg.n_test, cfg.seed + 1))


def fgsm_at(units: U.Units) -> torch.nn.Module:
    cfg, (ds, (x, y), _) = units.cfg, units.data
    model = M.build("mnist_cnn", ds.shape, ds.num_classes, seed=cfg.seed, width=4)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)

    def fit():
        for _ in range(cfg.epochs):
            for i in range(0, len(y), 50):
                toy_method.fgsm_step(model.train(), opt, x[i : i + 50], y[i : i + 50], cfg.eps)

    cached("FGSM-AT", {"model": model}, fit, key=(cfg, x), seeded=True)  # every model a unit, through the store
    return model.eval()


def plan(cfg: Config) -> P.StagePlan:
    n = P.train_size(cfg.dataset, cfg.n_train)
    out = P.StagePlan("p6_toy", cfg.profile, n)
    out.add("FGSM-AT", P.Model("mnist_cnn", P.shape_of(cfg.dataset), 10, (("width", 4),)), cfg.epochs, n, 2, 50, fgsm_at)
    return out


def run(cfg: Config, data_dir: str) -> Result:
    units = U.Units("p6_toy", plan(cfg).models, cfg, lambda: prepare(cfg, data_dir))
    model = units.get("FGSM-AT")
    _, (x, y), (x_test, y_test) = units.data
    r = {"clean": accuracy(model, x_test, y_test), "fgsm": robust_accuracy(model, x_test, y_test, A.fgsm, eps=cfg.eps)}
    return Result(r, cfg.dataset, {"train": len(y), "test": len(y_test)})


def table(r: dict) -> pd.DataFrame:
    return pd.DataFrame([{"attack": "none", "ours": 100 * r["clean"]}, {"attack": "FGSM", "ours": 100 * r["fgsm"]}])


def claim_specs(cfg: Config) -> list[C.Spec]:
    return [C.Spec("FGSM-AT keeps some accuracy under FGSM (%)", lambda r: 100 * r["fgsm"], C.above(0.0))]
'''

PROFILE = {"common": {"retrain": False, "deterministic": None, "dataset": "mnist5k", "eps": 0.3, "seed": 0}}
PROFILE |= {p: {"n_train": 200, "n_test": 100, "epochs": 1} for p in ("smoke", "cpu", "paper")}

CELLS = [
    'profile: str = "smoke"\nsettings: dict = {}\nresults_dir: str = "build/smoke/p6_toy"\n'
    'data_dir: str = "data/prepared"\nmodels_dir: str | None = None\ndry_run: bool = False',
    "import p6_toy\nfrom lib import claims as C\nfrom lib.notebook import StageRun\n\nrun = StageRun(p6_toy, profile, settings, results_dir, models_dir, dry_run)",
    "result = p6_toy.run(run.cfg, data_dir)\nr = result.measurements\nmeta = run.meta(result.dataset, result.samples)\n"
    "run.out.table('accuracy', p6_toy.table(r), 'Accuracy (%)', meta)",
    "run.out.metrics({'clean': 100 * r['clean'], 'fgsm': 100 * r['fgsm']}, {'results': r}, meta)\n"
    "run.write_claims(C.evaluate(p6_toy.claim_specs(run.cfg), r))",
]


def _write_toy(root):
    """The four files of a sixth paper: method, stage, notebook, profile."""
    (root / "toy_method.py").write_text(textwrap.dedent(METHOD))
    (root / "p6_toy.py").write_text(textwrap.dedent(STAGE))
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in CELLS])
    nb.cells[0].metadata["tags"] = ["parameters"]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, root / "p6_toy.ipynb")
    (root / "profiles").mkdir()
    (root / "profiles" / "p6_toy.yaml").write_text(yaml.safe_dump(PROFILE))
    (root / "params.yaml").write_text("profile: smoke\np6_toy: {}\n")


def test_a_sixth_stage_is_four_files_and_one_registry_line(tmp_path, monkeypatch):
    _write_toy(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))  # the toy's modules: importable here and in the kernel
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    toy = stages.Stage(
        "p6_toy", stages.Table("p6 — toy", ("accuracy",)), module="p6_toy", notebook=tmp_path / "p6_toy.ipynb"
    )
    with stages.registered(toy):
        params = checked_parameters("p6_toy", "smoke", tmp_path / "params.yaml")
        assert plan_stage("p6_toy", params).models[0].epochs == 1
        assert "p6_toy" in dvcfile.render()
        out = run_stage(
            "p6_toy", "smoke", tmp_path / "results", tmp_path / "params.yaml", models_root=tmp_path / "models"
        )
    assert "p6_toy" not in stages.STAGES
    for name in OUTPUTS:
        assert (out / name.format(stage="p6_toy")).exists(), name
    (claim,) = json.loads((out / "claims.json").read_text())
    assert claim["verdict"] in ("held", "did not hold")  # decided: the toy has no gate to fail
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0 <= metrics["p6.fgsm"] <= metrics["p6.clean"] <= 100 and "p6_toy" in (out / "p6_toy.html").read_text()
