"""compare: the Pareto front, configuration checks, and the paper profile's code path on CIFAR-shaped data."""

from __future__ import annotations

import pytest
import torch

from lib.errors import ConfigError
from lib.params import stage_config
from lib.stages import compare


def _config(profile: str, **override) -> compare.Config:
    return stage_config("compare", profile, **override)


def test_pareto_front_keeps_only_undominated_points():
    points = [(1.0, 10.0), (2.0, 30.0), (3.0, 20.0), (10.0, 50.0), (10.0, 40.0), (0.5, 5.0)]
    assert compare.pareto_front(points) == [5, 0, 1, 3]


def test_every_paper_defence_and_the_references_are_in_every_profile():
    for profile in ("smoke", "cpu", "paper"):
        assert set(_config(profile).strengths) == set(compare.DEFENCES)
    paper = _config("paper")
    assert (paper.dataset, paper.model, paper.eps_linf) == ("cifar10", "resnet20", 0.0314)


@pytest.mark.parametrize(
    "bad",
    [
        dict(strengths={"clean": [None], "magic": [0.1]}),
        dict(strengths={"fgsm_at": [0.1]}),
        dict(eps_linf=-0.1),
        dict(model="vgg"),
        dict(dataset="svhn"),
        dict(strengths={"clean": [None], "pgd_at": [-1.0]}),
        dict(patience=0),
        dict(n_test=300, n_clean_test=200),
        dict(n_test=None, n_clean_test=500),
    ],
)
def test_bad_config_is_rejected(bad):
    with pytest.raises(ConfigError):
        compare.Config(**{"dataset": "fashion_mnist", **bad}).validate()


def test_sanity_checks_are_decided_by_counts_not_float_rounding():
    # 400 images: a 4-image gap is exactly one point, but accuracies are float32 means: 0.3925 - 0.3825 is 0.0100000202...
    f32 = lambda v: float(torch.tensor(v, dtype=torch.float32))  # noqa: E731
    ok = dict(
        curve=[0.9, 0.5, 0.01],
        near_zero=0.05,
        linf=f32(0.3925),
        linf_2x=f32(0.3925),
        l2=f32(0.54),
        aa={"linf": f32(0.3825), "l2": f32(0.53)},
        black_box=f32(0.3825),
        ours_subset=f32(0.3925),
        foolbox=f32(0.3825),
    )
    assert abs(ok["aa"]["linf"] - ok["linf"]) > 0.01  # what made the committed check fail
    checks = compare.sanity_checks(**ok)
    assert all(checks.values()), checks
    worse = compare.sanity_checks(
        **{
            **ok,
            "aa": {"linf": 0.3800, "l2": 0.49},
            "black_box": 0.3800,
            "ours_subset": 0.3950,
            "linf_2x": 0.4025,
            "curve": [0.9, 0.5, 0.06],
        }
    )  # 4-5 images off, no fall to zero
    assert not any(worse.values()), worse


def _trained(defence: str, benign: float, epochs: int, stopped: bool = True) -> compare.Trained:
    history = [{"epoch": e, "val_acc": 0.80} for e in range(1, epochs + 1)]
    history[-1]["early_stopped"] = stopped
    return compare.Trained(defence, 0.1, compare.TrainResult(torch.nn.Identity(), history), benign)


def test_p3_in_the_comparison_must_pass_a_reset_as_in_its_own_stage():
    cfg = _config("cpu")
    r = {
        "target": 0.81,
        "chosen": {
            "p3_single_step_reuse": _trained("p3_single_step_reuse", 0.82, 4),
            "fgsm_at": _trained("fgsm_at", 0.80, 7),
        },
    }
    short = compare.defence_gates(r, "p3_single_step_reuse", cfg)
    assert [g.passed for g in short] == [True, True, False] and short[-1].threshold == cfg.reset_every + 1
    r["chosen"]["p3_single_step_reuse"] = _trained("p3_single_step_reuse", 0.82, cfg.reset_every + 1, stopped=False)
    assert all(g.passed for g in compare.defence_gates(r, "p3_single_step_reuse", cfg))
    assert len(compare.defence_gates(r, "fgsm_at", cfg)) == 2  # the mechanism gates are p2's and p3's only


@pytest.mark.parametrize(("pgn_l2", "passed"), [(1.0, True), (0.6, True), (0.4, False), (2.5, False)])
def test_pgn_in_the_comparison_needs_perturbations_comparable_to_fgsm_at(pgn_l2, passed):
    cfg = _config("cpu")
    r = {
        "target": 0.81,
        "chosen": {"p2_pgn": _trained("p2_pgn", 0.82, 7), "fgsm_at": _trained("fgsm_at", 0.80, 7)},
        "perturbation_l2": {"p2_pgn": pgn_l2, "fgsm_at": 1.0},
    }
    gates = compare.defence_gates(r, "p2_pgn", cfg)
    assert len(gates) == 3 and gates[-1].passed is passed and gates[-1].value == pytest.approx(pgn_l2)
    del r["perturbation_l2"]  # not measured (no FGSM-AT in the run): no gate rather than an invented one
    assert len(compare.defence_gates(r, "p2_pgn", cfg)) == 2
