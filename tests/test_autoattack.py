"""AutoAttack behind our contract: at least as strong as our PGD, inside the budget, clear errors."""

from __future__ import annotations

import pytest
import torch

import lib.attack_settings as S
import lib.attacks as A
from lib.errors import ConfigError
from lib.evaluate import accuracy, robust_accuracy
from lib.runtime import DryRun


@pytest.mark.parametrize("norm,eps", [("linf", 0.1), ("l2", 1.5)])
def test_autoattack_is_at_least_as_strong_as_our_pgd_and_stays_in_the_budget(trained_cnn, test_batch, norm, eps):
    """The reference attacks (APGD-CE + APGD-T, 30 iterations each: on this model as strong as 100
    at a third of the time) on a CNN trained in the test session: accuracy at most PGD-20's + 0.5
    point; examples in [0, 1] and inside the budget."""
    x, y = test_batch
    trained_cnn.train()
    x_adv = A.autoattack(trained_cnn, x, y, eps=eps, norm=norm, version="apgd-ce+t", iterations=30)
    assert trained_cnn.training  # the model's mode restored
    trained_cnn.eval()
    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype and x_adv.min() >= 0 and x_adv.max() <= 1
    d = (x_adv - x).flatten(1)
    size = d.abs().amax(1) if norm == "linf" else d.norm(dim=1)
    assert (size <= eps * (1 + 1e-6)).all()
    ours = robust_accuracy(trained_cnn, x, y, A.pgd, eps=eps, steps=20, norm=norm)
    theirs = accuracy(trained_cnn, x_adv, y)
    assert theirs <= ours + 0.005, (theirs, ours)
    assert theirs < accuracy(trained_cnn, x, y)


def test_standard_version_runs_all_four_attacks_inside_the_budget(trained_cnn, test_batch, monkeypatch):
    """The standard version at CI size (a dry run: 2 iterations per APGD/FAB run, 2 Square queries)
    on 20 digits that survive such weak attacks: APGD-CE, APGD-T, FAB-T and Square all run."""
    from pyautoattack.fab_pt import FABAttack_PT
    from pyautoattack.square import SquareAttack

    monkeypatch.setattr(DryRun, "on", True)
    ran = []
    for cls in (FABAttack_PT, SquareAttack):
        monkeypatch.setattr(cls, "perturb", _recorded(cls.perturb, cls.__name__, ran))
    x, y = test_batch[0][:20], test_batch[1][:20]
    x_adv = A.autoattack(trained_cnn, x, y, eps=0.1, version="standard")
    assert ran == ["FABAttack_PT", "SquareAttack"]
    assert (x_adv - x).abs().amax() <= 0.1 + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1


def _recorded(method, name: str, ran: list):
    def wrapper(self, *args, **kwargs):
        ran.append(name)
        return method(self, *args, **kwargs)

    return wrapper


def test_misclassified_images_and_eps_zero_come_back_unchanged_and_the_random_state_is_kept(trained_cnn, test_batch):
    x, y = test_batch[0][:20], test_batch[1][:20]
    assert torch.equal(A.autoattack(trained_cnn, x, y, eps=0.0, version="apgd-ce+t", iterations=5), x)
    state = torch.get_rng_state()
    A.autoattack(trained_cnn, x, y, eps=0.1, version="apgd-ce+t", iterations=2, seed=123)
    assert torch.equal(torch.get_rng_state(), state)  # the reference reseeds torch; our caller's random state is kept
    y_wrong = (y + 1) % 10
    already = trained_cnn(x).argmax(1) != y_wrong  # misclassified under these labels: nothing to attack
    x_adv = A.autoattack(trained_cnn, x, y_wrong, eps=0.1, version="apgd-ce+t", iterations=5)
    assert already.any() and torch.equal(x_adv[already], x[already])


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(eps=-0.1), "eps must be a finite number >= 0"),
        (dict(eps=0.1, norm="l1"), "unknown norm 'l1' for AutoAttack"),
        (dict(eps=0.1, version="plus"), "unknown AutoAttack version 'plus'"),
        (dict(eps=0.1, iterations=0), "iterations must be an integer >= 1"),
    ],
)
def test_bad_input_is_one_clear_error(trained_cnn, test_batch, kwargs, message):
    x, y = test_batch[0][:4], test_batch[1][:4]
    with pytest.raises(ConfigError, match=message):
        A.autoattack(trained_cnn, x, y, **kwargs)
    with pytest.raises(ConfigError, match="must lie in"):
        A.autoattack(trained_cnn, x * 2, y, eps=0.1)


@pytest.mark.parametrize(
    "args,message",
    [
        (("plus", 10), "autoattack must be one of standard, apgd-ce\\+t, got 'plus'"),
        (("standard", 0), "autoattack_iterations must be >= 1, got 0"),
        (("standard", 10, [], [0.1, 0.3]), "autoattack_eps must be a non-empty subset"),
        (("standard", 10, [0.2], [0.1, 0.3]), "autoattack_eps must be a non-empty subset of \\[0.1, 0.3\\]"),
    ],
)
def test_a_stage_configs_autoattack_settings_are_checked_in_one_place(args, message):
    with pytest.raises(ConfigError, match=message):
        S.check_autoattack_settings(*args)
    S.check_autoattack_settings("apgd-ce+t", 5, [0.3], [0.1, 0.3])  # valid settings pass
    assert S.autoattack_budgets(None, [0.1, 0.3]) == [0.1, 0.3] and S.autoattack_budgets([0.3], [0.1, 0.3]) == [0.3]
