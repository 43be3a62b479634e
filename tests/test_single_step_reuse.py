"""p3: the proposed stored-perturbation source, ATDA's losses, and the paper profile's code path."""

from __future__ import annotations

import pytest
import torch

from lib.errors import ConfigError
from lib.methods import single_step_reuse as p3
from lib.params import load_stage_params, method_params


def _config(profile: str, **override) -> p3.Config:
    params = load_stage_params("p3_single_step_reuse", profile)
    params = method_params(params)
    return p3.Config(profile=profile, **{**params, **override}).validate()


def test_paper_profile_is_the_papers_setting():
    cfg = _config("paper")
    assert cfg.datasets == {"mnist": 0.3, "fashion_mnist": 0.2}
    assert (cfg.n_train, cfg.n_test, cfg.model_width, cfg.model_hidden) == (None, None, 64, 128)
    assert cfg.step_fraction == 0.1 and cfg.reset_every == 20 and cfg.bim_iterations == list(range(1, 31))


def test_atda_loss_is_finite_and_differentiable():
    src = p3.ATDASource(0.3, 10, 1 / 3, 1 / 3, 1.0, 0.9)
    clean = torch.randn(32, 10, requires_grad=True)
    adv = torch.randn(32, 10, requires_grad=True)
    loss = src.extra_loss(clean, adv, torch.arange(32) % 10)
    loss.backward()
    assert torch.isfinite(loss) and clean.grad.abs().sum() > 0 and adv.grad.abs().sum() > 0
    same = src.extra_loss(clean.detach(), clean.detach(), torch.arange(32) % 10)
    assert same >= 0


@pytest.mark.parametrize("bad", [dict(datasets={"mnist": -0.1}), dict(datasets={"svhn": 0.1}), dict(defences=["magic"]), dict(reset_every=0)])
def test_bad_config_is_rejected(bad):
    with pytest.raises(ConfigError):
        p3.Config(**bad).validate()
