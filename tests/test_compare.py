"""compare: the Pareto front, configuration checks, and the paper profile's code path on CIFAR-shaped data."""

from __future__ import annotations

import pytest

import lib.data as D
from lib import compare
from lib.errors import ConfigError
from lib.params import load_stage_params, method_params


def _config(profile: str, **override) -> compare.Config:
    params = load_stage_params("compare", profile)
    params = method_params(params)
    return compare.Config(profile=profile, **{**params, **override}).validate()


def test_pareto_front_keeps_only_undominated_points():
    points = [(1.0, 10.0), (2.0, 30.0), (3.0, 20.0), (10.0, 50.0), (10.0, 40.0), (0.5, 5.0)]
    assert compare.pareto_front(points) == [5, 0, 1, 3]


def test_every_paper_defence_and_the_references_are_in_every_profile():
    for profile in ("smoke", "cpu", "paper"):
        assert set(_config(profile).strengths) == set(compare.DEFENCES)
    paper = _config("paper")
    assert (paper.dataset, paper.model, paper.eps_linf) == ("cifar10", "resnet20", 0.0314)


def test_paper_profile_code_path_one_batch_on_cifar_shaped_data(synthetic, monkeypatch):
    ds = synthetic("cifar10", (3, 32, 32), 48)
    monkeypatch.setattr(D, "load", lambda name, prepared_dir=None: ds)
    strengths = {d: v[:1] for d, v in _config("paper").strengths.items()}
    cfg = _config("paper", epochs=1, max_batches=1, batch_size=16, n_test=16, n_rho=4, n_foolbox=8, pgd_steps=2, pgd_restarts=2,
                  cw_steps=2, cw_binary_steps=1, k=4, strengths=strengths, eps_grid=[0.0, 0.0314, 0.5])
    r = compare.run(cfg, None)
    board = compare.leaderboard(r, cfg)
    assert len(board) == len(compare.DEFENCES) and set(compare.CHECKS.values()) <= set(board.columns)
    assert set(board[list(compare.CHECKS.values())].values.ravel()) <= {"pass", "FAIL"}
    assert (board.loc[board["defence"] == "Clean training", "cost (x clean epoch)"] == 1.0).all()
    compare.pareto_figure(board, cfg, "test")
    compare.eps_curves_figure(r, cfg, "test")
    assert "Pareto front" in compare.findings(board, cfg) and set(compare.summary_metrics(r)["defences"]) == set(compare.DEFENCES)


@pytest.mark.parametrize("bad", [dict(strengths={"clean": [None], "magic": [0.1]}), dict(strengths={"fgsm_at": [0.1]}),
                                 dict(eps_linf=-0.1), dict(model="vgg"), dict(dataset="svhn"), dict(strengths={"clean": [None], "pgd_at": [-1.0]})])
def test_bad_config_is_rejected(bad):
    with pytest.raises(ConfigError):
        compare.Config(**{"dataset": "fashion_mnist", **bad}).validate()
