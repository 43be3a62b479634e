"""The executor: two local workers train every unit of two stages, the stage then only loads and gives the numbers
of the code before units (the p5 golden); a unit whose training raises and a worker killed mid-unit are named,
leave nothing half-written, and a re-run trains only what is missing; a real one-node SLURM cluster trains the
units of two stages through submitit."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import yaml

from lib.runtime import REPO_ROOT
from tests.test_model_store_stage import _assert_matches_the_code_before_the_store, _metrics

EXECUTOR = [sys.executable, "-m", "lib.train_units"]
P5, P1 = "p5_mnist_gan", "p1_conv_generator_ensemble"


def _train(*args: str, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*EXECUTOR, *args, "--no-estimate"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout, env=env
    )


def _render(stage: str, models: Path, results: Path, *extra: str) -> dict:
    """The stage's notebook from the store ``models``; its training.json."""
    run = subprocess.run(
        [sys.executable, "-m", "lib.pipeline", stage, "--profile", "smoke", "--models", str(models), "--results",
         str(results), *extra],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    return json.loads((results / stage / "training.json").read_text())


def _entries(store: Path) -> list[str]:
    return sorted(p.name for p in store.iterdir() if p.is_file())


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """p5's and p1's smoke units trained by two workers into a fresh store."""
    root = tmp_path_factory.mktemp("executor")
    run = _train(P5, P1, "--profile", "smoke", "-j", "2", "--models", str(root / "models"))
    return root, run


def test_two_workers_train_every_unit_and_the_stage_then_only_loads(trained):
    root, run = trained
    assert run.returncode == 0, run.stdout + run.stderr
    assert "12 units in 2 stages (smoke profile): 0 in the store, 12 to train by local with 2 workers x 1 torch" in (
        run.stdout
    )
    assert "[12/12]" in run.stdout and "12 of 12 units trained" in run.stdout
    training = _render(P5, root / "models", root / "results")
    assert training["models"] and not [m["name"] for m in training["models"] if not m["loaded"]]
    assert training["threads_per_unit"] == 1
    _assert_matches_the_code_before_the_store(_metrics(root / "results"))  # the recorded numbers, exactly
    again = _train(P5, P1, "--profile", "smoke", "-j", "2", "--models", str(root / "models"))
    assert again.returncode == 0 and "12 in the store, 0 to train" in again.stdout


SITECUSTOMIZE = """
import os
if os.environ.get("LIB_TEST_FAIL_UNIT"):  # a test's fault: the named unit's training raises
    import lib.cache as cache
    original = cache._train_or_load
    def failing(name, modules, fit, path, record):
        if name == os.environ["LIB_TEST_FAIL_UNIT"] and record is None:
            raise RuntimeError(f"injected failure while training {name}")
        return original(name, modules, fit, path, record)
    cache._train_or_load = failing
"""


def test_a_unit_whose_training_raises_is_named_and_a_rerun_trains_only_it(trained, tmp_path):
    root, _ = trained
    models = tmp_path / "models"
    shutil.copytree(root / "models" / P5, models / P5)
    victim = "phase 3: D and G alternately at intensity 0.3"
    for entry in (models / P5).glob("phase-3-*.pt"):
        entry.unlink()
    (tmp_path / "inject").mkdir()
    (tmp_path / "inject" / "sitecustomize.py").write_text(SITECUSTOMIZE)
    env = {**_environ(), "PYTHONPATH": str(tmp_path / "inject"), "LIB_TEST_FAIL_UNIT": victim}
    run = _train(P5, "--profile", "smoke", "-j", "2", "--models", str(models), env=env)
    assert run.returncode == 1, run.stdout + run.stderr
    log = models / ".logs" / P5 / "phase-3-d-and-g-alternately-at-intensity-0.3.log"
    errors = [line for line in run.stderr.splitlines() if line.startswith("error:")]
    assert errors == [f"error: unit '{victim}' of {P5} failed, see {log}"]
    assert "RuntimeError: injected failure while training" in log.read_text()
    assert not list((models / P5).glob("phase-3-*")) and not list(models.rglob("*.tmp"))  # nothing half-written
    before = _entries(models / P5)
    rerun = _train(P5, "--profile", "smoke", "-j", "2", "--models", str(models))
    assert rerun.returncode == 0 and "6 in the store, 1 to train" in rerun.stdout, rerun.stdout + rerun.stderr
    assert set(before) < set(_entries(models / P5)) and len(_entries(models / P5)) == len(before) + 1


def _environ() -> dict:
    import os

    return dict(os.environ)


def test_a_worker_killed_mid_unit_is_named_and_a_rerun_completes(trained, tmp_path):
    """SIGKILL to one of two workers training G: the other finishes, the killed unit is named with its log, no entry
    of it (nor a partial one) is in the store, and the next run trains it alone."""
    root, _ = trained
    models = tmp_path / "models"
    shutil.copytree(root / "models" / P5, models / P5)
    params = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    params[P5] = {"g_epochs": 40, "intensities": [0.3], "alternating_intensities": [0.3]}  # two Gs to train, slowly
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    shutil.copytree(REPO_ROOT / "profiles", tmp_path / "profiles")
    stored = set((models / P5).glob("phase-2-g-at-intensity-0.3-*"))  # the smoke profile's G (2 epochs, another key)
    argv = [*EXECUTOR, P5, "--profile", "smoke", "-j", "2", "--no-estimate", "--models", str(models)]
    argv += ["--params", str(tmp_path / "params.yaml")]
    coordinator = subprocess.Popen(argv, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    victim, deadline = None, time.monotonic() + 120
    while victim is None and time.monotonic() < deadline and coordinator.poll() is None:
        for child in psutil.Process(coordinator.pid).children():
            cmd = child.cmdline()
            if "--worker" in cmd and "phase 2: G at intensity 0.3" in cmd and time.time() - child.create_time() > 8:
                victim = child
        time.sleep(0.2)
    assert victim is not None, "no worker training phase 2 was found running"
    victim.send_signal(signal.SIGKILL)
    out, err = coordinator.communicate(timeout=300)
    assert coordinator.returncode == 1, out + err
    log = models / ".logs" / P5 / "phase-2-g-at-intensity-0.3.log"
    assert [line for line in err.splitlines() if line.startswith("error:")] == [
        f"error: unit 'phase 2: G at intensity 0.3' of {P5} failed, see {log}"
    ]
    assert "FAILED (exit -9" in out and "diagnosis: G with clamped tanh at intensity 0.3: done" in out
    assert set((models / P5).glob("phase-2-g-at-intensity-0.3-*")) == stored  # no entry of the killed unit
    rerun = subprocess.run(argv, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0 and "1 to train" in rerun.stdout, rerun.stdout + rerun.stderr
    assert len(set((models / P5).glob("phase-2-g-at-intensity-0.3-*.pt")) - stored) == 1
    assert not list(models.rglob("*.tmp"))


def test_a_slurm_cluster_trains_the_units_of_two_stages_and_the_stages_then_only_load(tmp_path):
    """tools/slurm-local.sh brings up a one-node cluster on 127.0.0.1 (root on Debian; it says why otherwise)."""
    up = subprocess.run([str(REPO_ROOT / "tools" / "slurm-local.sh")], capture_output=True, text=True, timeout=600)
    if up.returncode == 3:
        pytest.skip(up.stderr.strip())
    assert up.returncode == 0, up.stderr
    models = tmp_path / "models"
    run = _train(P5, P1, "--profile", "smoke", "--executor", "slurm", "--models", str(models), timeout=900)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "12 to train by slurm" in run.stdout and "12 of 12 units trained" in run.stdout
    assert list((models / ".submitit").iterdir())  # submitit's job folders, beside the store
    training = _render(P5, models, tmp_path / "results")
    assert not [m["name"] for m in training["models"] if not m["loaded"]]
    again = _train(P5, P1, "--profile", "smoke", "--models", str(models))  # every unit where its stage looks it up
    assert again.returncode == 0 and "12 in the store, 0 to train" in again.stdout, again.stdout + again.stderr
