"""Every classifier works for 28x28x1 and 32x32x3 inputs and any class count."""

from __future__ import annotations

import pytest
import torch

import lib.models as M
from lib.errors import ConfigError


@pytest.mark.parametrize(
    "name,kw",
    [
        ("mnist_cnn", {}),
        ("convpool_cnn", {"width": 0.25}),
        ("resnet20", {}),
        ("tanh_cnn", {"mean": 0.13, "std": 0.31}),
        ("resnet18", {}),
        ("resnet50", {}),
        ("resnet101", {"small_input_stem": False}),
    ],
)
@pytest.mark.parametrize("shape,classes", [((1, 28, 28), 10), ((3, 32, 32), 100), ((3, 32, 32), 2)])
def test_classifier_shapes(name, kw, shape, classes):
    model = M.build(name, shape, classes, **kw).eval()
    with torch.no_grad():
        out = model(torch.rand(2, *shape))
    assert out.shape == (2, classes)


def test_resnet20_has_the_published_size():
    assert 0.26e6 < M.count_parameters(M.build("resnet20", (3, 32, 32), 10)) < 0.28e6


def test_initial_weights_depend_only_on_seed():
    torch.manual_seed(123)
    a = M.build("mnist_cnn", (1, 28, 28), 10, seed=5)
    torch.manual_seed(456)
    b = M.build("mnist_cnn", (1, 28, 28), 10, seed=5)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


def test_unknown_model_is_a_clear_error():
    with pytest.raises(ConfigError, match="unknown model 'vgg'"):
        M.build("vgg", (1, 28, 28), 10)
