"""Every result names the commit, whether the tree was dirty, the parameters' hash and the tools."""

from __future__ import annotations

import json
import re
import subprocess

import pytest

from lib import readme
from lib.params import params_hash
from lib.pipeline import provenance
from lib.runtime import REPO_ROOT, git_state


def _git(root, *args):
    subprocess.run(["git", *args], cwd=root, check=True, capture_output=True)


@pytest.fixture
def repo(tmp_path):
    for folder in ("lib", "results/p5"):
        (tmp_path / folder).mkdir(parents=True)
    for name in ("lib/train.py", "params.yaml", "dvc.lock", "results/p5/metrics.json"):
        (tmp_path / name).write_text("v1\n")
    _git(tmp_path, "init", "-q")
    _git(tmp_path, "add", ".")
    _git(tmp_path, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "one")
    return tmp_path


def test_clean_tree_is_not_dirty(repo):
    state = git_state(repo)
    assert (
        state["dirty"] is False
        and state["changed_files"] == state["untracked_files"] == []
        and len(state["commit"]) >= 7
    )


def test_changed_inputs_make_the_tree_dirty_and_are_named(repo):
    (repo / "lib/train.py").write_text("v2\n")
    (repo / "params.yaml").write_text("v2\n")
    assert git_state(repo) | {"commit": None} == {
        "commit": None,
        "dirty": True,
        "changed_files": ["lib/train.py", "params.yaml"],
        "untracked_files": [],
    }


def test_an_untracked_file_among_the_inputs_makes_the_tree_dirty_and_is_named(repo):
    (repo / "lib/new_attack.py").write_text("x = 1\n")
    (repo / "results/p5/extra.json").write_text("{}\n")  # an output: not an input
    (repo / "notes.txt").write_text("scratch\n")  # not among the stages' inputs
    (repo / ".gitignore").write_text("lib/ignored.py\n")
    (repo / "lib/ignored.py").write_text("y = 2\n")
    assert git_state(repo) | {"commit": None} == {
        "commit": None,
        "dirty": True,
        "changed_files": [],
        "untracked_files": ["lib/new_attack.py"],
    }


def test_the_pipelines_own_outputs_do_not_make_the_tree_dirty(repo):
    (repo / "results/p5/metrics.json").write_text("v2\n")  # an earlier stage of the same `dvc repro`
    (repo / "dvc.lock").write_text("v2\n")
    assert git_state(repo)["dirty"] is False


def test_outside_a_checkout_the_commit_is_unknown(tmp_path):
    assert git_state(tmp_path) == {
        "commit": "unknown (not a git checkout)",
        "dirty": None,
        "changed_files": [],
        "untracked_files": [],
    }


def test_params_hash_follows_values_not_machine_paths():
    base = {"epochs": 3, "lr": 0.1, "results_dir": "/tmp/a", "data_dir": "/x"}
    assert params_hash(base) == params_hash({**base, "results_dir": "results/.p5.tmp", "data_dir": "data/prepared"})
    assert params_hash(base) != params_hash({**base, "epochs": 4})
    assert len(params_hash(base)) == 16


def test_provenance_names_the_tools():
    prov = provenance({"epochs": 1})
    assert set(prov) == {"commit", "dirty", "changed_files", "untracked_files", "params_sha256", "versions"}
    assert {"torch", "torchvision", "papermill", "dvc"} <= set(prov["versions"])
    assert all(v != "not installed" for k, v in prov["versions"].items() if k != "dvc")


def test_readme_marks_results_from_a_dirty_tree(tmp_path):
    stage = tmp_path / "p5_mnist_gan"
    (stage / "tables").mkdir(parents=True)
    (stage / "tables" / "headline.csv").write_text("metric,paper,ours,delta\nD clean,98.4,97.1,-1.3\n")
    meta = {
        "profile": "cpu",
        "reduced": True,
        "device": "CPU: X",
        "wall_time_s": 60,
        "provenance": {
            "commit": "abc1234",
            "dirty": True,
            "changed_files": ["lib/train.py"],
            "untracked_files": ["lib/new.py"],
        },
    }
    (stage / "details.json").write_text(json.dumps({"meta": meta}))
    assert (
        "commit abc1234 **with uncommitted changes (dirty tree: `lib/train.py`, `lib/new.py` (untracked))**"
        in readme.render(tmp_path)
    )
    meta["provenance"].update(dirty=False, changed_files=[], untracked_files=[])
    (stage / "details.json").write_text(json.dumps({"meta": meta}))
    text = readme.render(tmp_path)
    assert "commit abc1234." in text and "dirty" not in text


def test_a_stage_run_records_provenance_and_no_machine_path(p5_smoke_runs):
    results, _ = p5_smoke_runs["first"]  # a run inside the checkout (git-ignored build/), as results/ is
    out = results / "p5_mnist_gan"
    meta = json.loads((out / "details.json").read_text())["meta"]
    assert meta["provenance"]["commit"] == git_state()["commit"] and len(meta["provenance"]["params_sha256"]) == 16
    assert meta["attack_libraries"] == {}  # p5 uses only our attacks
    nb = json.loads((out / "p5_mnist_gan.ipynb").read_text())
    paths = nb["metadata"]["papermill"]
    injected = {k: v for k, v in paths["parameters"].items() if k.endswith("_dir")}
    rel = results.relative_to(REPO_ROOT)
    assert (paths["input_path"], paths["output_path"]) == (
        "notebooks/p5_mnist_gan.ipynb",
        f"{rel}/p5_mnist_gan/p5_mnist_gan.ipynb",
    )
    assert re.fullmatch(rf"{rel}/\.p5_mnist_gan\.\d+\.tmp", injected.pop("results_dir")), (
        "a temporary folder of the run's own"
    )
    assert injected == {"data_dir": "data/prepared", "models_dir": f"{rel.parent.parent}/models/p5_mnist_gan"}
    assert str(REPO_ROOT) not in "".join((out / n).read_text() for n in ("metrics.json", "details.json", "claims.md"))
    assert sorted(p.name for p in results.iterdir()) == [
        ".p5_mnist_gan.lock",
        "p5_mnist_gan",
    ]  # the lock file stays, empty
