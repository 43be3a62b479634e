"""p5: the generator's L∞ bound, G's ascent step, phase 3's source, and the paper profile's code path."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import lib.data as D
import lib.models as M
from lib.errors import ConfigError
from lib.methods import mnist_gan as p5
from lib.params import load_stage_params, method_params


def _config(profile: str, **override) -> p5.Config:
    params = load_stage_params("p5_mnist_gan", profile)
    params = method_params(params)
    return p5.Config(profile=profile, **{**params, **override}).validate()


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32)])
def test_generator_is_linf_bounded_and_keeps_images_valid(shape):
    G = p5.PerturbationGenerator(shape, eps=0.05, width=4)
    with torch.no_grad():
        for p in G.parameters():  # large weights saturate tanh: the bound must still hold
            p.mul_(50)
    x = torch.rand(6, *shape)
    delta, x_adv = G(x), G.perturb(x)
    assert delta.shape == x.shape
    assert delta.abs().max() <= 0.05 + 1e-6 and delta.abs().max() > 0.04
    assert x_adv.min() >= 0 and x_adv.max() <= 1 and (x_adv - x).abs().max() <= 0.05 + 1e-6


def test_generator_step_ascends_the_loss_and_leaves_the_classifier_alone():
    torch.manual_seed(0)
    d = M.build("tanh_cnn", (1, 28, 28), 10, seed=0).eval()
    d_before = [p.clone() for p in d.parameters()]
    G = p5.PerturbationGenerator((1, 28, 28), eps=0.1, width=4)
    x, y = torch.rand(32, 1, 28, 28), torch.arange(32) % 10
    opt = p5.generator_optimizer(G, "sgd", 0.05)
    G.train()

    def loss():
        with torch.no_grad():
            return F.cross_entropy(d(G.perturb(x)), y)

    before = loss()
    for _ in range(3):
        p5.generator_step(G, d, x, y, opt)
    assert loss() > before
    assert all(torch.equal(a, b) for a, b in zip(d_before, d.parameters()))
    assert all(p.requires_grad for p in d.parameters())


def test_alternating_source_returns_bounded_detached_images():
    d = M.build("tanh_cnn", (1, 28, 28), 10, seed=0)
    G = p5.PerturbationGenerator((1, 28, 28), eps=0.2, width=4)
    src = p5.AlternatingGenerator(G, p5.generator_optimizer(G, "adam", 1e-3))
    x, y = torch.rand(8, 1, 28, 28), torch.arange(8)
    x_adv = src(d, x, y, torch.arange(8))
    assert not x_adv.requires_grad and (x_adv - x).abs().max() <= 0.2 + 1e-6


def test_normalized_intensity_is_a_multiple_of_the_pixel_std():
    split = D.Split(torch.tensor([[[[0, 255]]]], dtype=torch.uint8).repeat(4, 1, 1, 1), torch.zeros(4, dtype=torch.long))
    std = p5.pixel_std(split)
    assert std == pytest.approx(0.5345, abs=1e-3)  # unbiased std of {0, 1, 0, 1, ...} over 8 pixels
    assert p5.pixel_eps(0.3, std, "normalized") == pytest.approx(0.3 * std)
    assert p5.pixel_eps(0.3, std, "pixel") == 0.3


def test_paper_profile_is_the_papers_setting():
    cfg = _config("paper")
    assert cfg.dataset == "mnist" and cfg.intensities == [0.1, 0.3, 0.5, 0.7]
    assert (cfg.d_epochs, cfg.g_epochs, cfg.g_optimizer, cfg.g_lr, cfg.batch_size) == (70, 200, "sgd", 0.01, 100)


@pytest.mark.parametrize("bad", [
    dict(intensities=[-0.1]), dict(intensity_units="furlongs"), dict(alternating_intensities=[0.9]),
    dict(dataset="svhn"), dict(g_optimizer="rmsprop"), dict(g_epochs=0),
])
def test_bad_config_is_rejected(bad):
    with pytest.raises(ConfigError):
        p5.Config(**bad).validate()
