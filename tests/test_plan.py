"""The cost plan: every stage and profile planned, units that follow the settings, a probe that measures."""

from __future__ import annotations

import json

import pytest

from lib import plan as P
from lib import stages
from lib.params import checked_parameters, load_stage_params


def _params(stage: str, profile: str) -> dict:
    return checked_parameters(stage, profile)


@pytest.mark.parametrize("profile", ["smoke", "cpu", "paper"])
@pytest.mark.parametrize("stage", stages.names())
def test_every_stage_and_profile_has_a_plan_of_positive_cost(stage, profile):
    plan = P.plan_stage(stage, _params(stage, profile))
    assert plan.models and plan.units > 0 and all(m.units > 0 and m.epochs >= 1 and m.passes >= 1 for m in plan.models)


def test_the_paper_profile_costs_more_than_the_cpu_profile_in_every_stage():
    for stage in stages.names():
        assert P.plan_stage(stage, _params(stage, "paper")).units > P.plan_stage(stage, _params(stage, "cpu")).units


def test_units_follow_epochs_examples_and_attack_steps():
    p = _params("p3_single_step_reuse", "cpu")
    plan = {m.name.split()[-1]: m for m in P.plan_stage("p3_single_step_reuse", p).models}
    assert plan["vanilla"].units == p["epochs"]  # one clean epoch per epoch
    assert plan["bim10_adv"].units == p["epochs"] * (10 + 2)  # ten attack steps + adversarial and clean passes
    doubled = P.plan_stage("p3_single_step_reuse", {**p, "epochs": 2 * p["epochs"]})
    assert doubled.units == 2 * P.plan_stage("p3_single_step_reuse", p).units
    cpu = load_stage_params("p3_single_step_reuse", "cpu")
    assert (
        cpu["n_train"] - cpu["n_val"] == P.plan_stage("p3_single_step_reuse", p).train_examples
    )  # the validation split is held out


def test_the_probe_measures_a_positive_throughput():
    assert P.probe(P.Model("mnist_cnn", (1, 28, 28), 10, (("width", 4), ("hidden", 16))), 16) > 0


def test_the_command_prints_json_with_an_eta(capsys):
    assert P.main(["p5_mnist_gan", "--profile", "smoke", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["stages"][0]["stage"] == "p5_mnist_gan" and out["eta_s"] > 0 and out["throughput_images_per_s"]


def test_an_unknown_stage_is_one_clear_error(capsys):
    assert P.main(["p9", "--no-probe"]) == 2
    assert capsys.readouterr().err.count("error:") == 1
