"""p2 groundwork: the PGN generator's shapes, the tanh-space image, the gradient input, the minimax step."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import lib.data as D
import lib.models as M
from lib.errors import ConfigError
from lib.methods import pgn
from lib.train import TrainConfig, train


@pytest.mark.parametrize("shape,classes", [((1, 28, 28), 10), ((3, 32, 32), 100)])
@pytest.mark.parametrize("use", [pgn.INPUTS, ("label", "image"), ("image", "gradient"), ("label", "gradient")])
def test_generator_output_has_the_input_shape(shape, classes, use):
    g = pgn.PGNGenerator(shape, classes, width=8, dense=16, use=use)
    x = torch.rand(3, *shape)
    assert g(torch.randn_like(x), x, torch.tensor([0, 1, classes - 1])).shape == x.shape


def test_dropped_input_is_ignored():
    torch.manual_seed(0)
    g = pgn.PGNGenerator((1, 28, 28), 10, width=8, dense=16, use=("label", "image"))
    x, y = torch.rand(2, 1, 28, 28), torch.tensor([3, 4])
    assert torch.equal(g(torch.randn_like(x), x, y), g(torch.randn_like(x), x, y))


def test_tanh_space_image_stays_in_range_and_is_identity_at_zero():
    x = torch.rand(4, 3, 8, 8)
    x[0] = 0.0
    x[1] = 1.0
    assert torch.allclose(pgn.tanh_space(x, torch.zeros_like(x)), x, atol=1e-5)
    big = pgn.tanh_space(x, 100 * torch.randn_like(x))
    assert big.min() >= 0 and big.max() <= 1 and torch.isfinite(big).all()


def test_gradient_input_is_the_true_label_probability_gradient():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
    x, y = torch.rand(5, 1, 4, 4), torch.tensor([0, 1, 2, 0, 1])
    w = model[1].weight
    p = F.softmax(model(x), 1)
    # d p_y / d x = p_y * (w_y - sum_j p_j w_j), per sample, reshaped like x
    expected = (p.gather(1, y[:, None]) * (w[y] - p @ w)).view_as(x)
    assert torch.allclose(pgn.gradient_image(model, x, y, "sum"), expected, atol=1e-6)
    assert torch.allclose(pgn.gradient_image(model, x, y, "mean"), expected / 5, atol=1e-6)
    assert all(p.grad is None for p in model.parameters())


def test_minimax_step_trains_the_classifier_and_the_generator_ascends(synthetic):
    ds = synthetic("mnist", (1, 28, 28), 32)
    model = M.build("convpool_cnn", ds.shape, 10, width=0.125)
    g = pgn.PGNGenerator(ds.shape, 10, width=8, dense=16)
    before = [p.clone() for p in g.parameters()]
    src = pgn.PGNSource(g, c_l=1.0, lr=1e-3)
    train(model, D.loader(ds.train, 16, True, with_index=True), TrainConfig(epochs=1, lr=1e-3), src)
    assert any(not torch.equal(a, b) for a, b in zip(before, g.parameters()))
    assert src.penalty is not None and src.penalty >= 0


@pytest.mark.parametrize("bad", [dict(use=("colour",)), dict(in_shape=(1, 30, 30))])
def test_bad_generator_arguments_are_rejected(bad):
    kw = {"in_shape": (1, 28, 28), "num_classes": 10, **bad}
    with pytest.raises(ConfigError):
        pgn.PGNGenerator(**kw)


def test_generator_ascends_loss_minus_penalty_with_the_classifier_fixed():
    torch.manual_seed(0)
    model = M.build("convpool_cnn", (1, 28, 28), 10, width=0.125).eval()
    g = pgn.PGNGenerator((1, 28, 28), 10, width=8, dense=16)
    src = pgn.PGNSource(g, c_l=0.1, lr=1e-3)
    x, y = torch.rand(16, 1, 28, 28), torch.arange(16) % 10

    def objective():
        grad = pgn.gradient_image(model, x, y)  # needs autograd itself, so outside no_grad
        with torch.no_grad():
            x_adv = pgn.tanh_space(x, g(grad, x, y))
            return F.cross_entropy(model(x_adv), y) - 0.1 * (x_adv - x).flatten(1).pow(2).sum(1).mean()

    before = objective()
    for _ in range(5):
        x_adv = src(model, x, y, None)
        (F.cross_entropy(model(x_adv), y) + src.extra_loss(None, None, y)).backward()
        src.step()
        model.zero_grad(set_to_none=True)
    assert objective() > before
