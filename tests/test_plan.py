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
    assert plan["runs"].epochs == 1  # the cost claims' timing: a fixed number of batches, whatever the epochs
    doubled = P.plan_stage("p3_single_step_reuse", {**p, "epochs": 2 * p["epochs"]})
    timing = plan["runs"].units
    assert doubled.units - timing == pytest.approx(
        2 * (P.plan_stage("p3_single_step_reuse", p).units - timing), abs=0.1
    )
    rounds = P.plan_stage("p3_single_step_reuse", {**p, "timing_rounds": 2 * p["timing_rounds"] + 1})
    assert {m.name: m.units for m in rounds.models}["timing runs"] == pytest.approx(2 * timing)  # (1 + rounds) runs
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


def test_a_run_is_held_to_its_plan():
    """A model the plan does not list stops the run at once; a listed one never trained stops it at the end;
    names are compared up to their numbers (p5's eps in pixel units come from the data)."""
    from lib.plan import Following, Model, PlanDrift, StagePlan

    plan = StagePlan("p9", "smoke", 100)
    model = Model("mnist_cnn", (1, 28, 28), 10)
    for name in ("phase 1: D", "phase 2: G at intensity 0.1", "phase 2: G at intensity 0.3"):
        plan.add(name, model, 2, 100, 1, 50)
    run = Following(plan)
    run.take("phase 1: D")
    run.take("phase 2: G at intensity 0.1")
    with pytest.raises(PlanDrift, match="lists models the run did not train: phase #: G at intensity #"):
        run.check_complete()
    run.take("phase 2: G at intensity 0.7")  # numbers masked: the third listed G
    run.check_complete()
    with pytest.raises(PlanDrift, match="trains 'phase 1: D', which its plan\\(cfg\\) does not list"):
        run.take("phase 1: D")  # listed once, trained twice
    with pytest.raises(PlanDrift, match="trains 'surrogate'"):
        Following(plan).take("surrogate")


def test_a_stage_run_stops_on_a_model_its_plan_does_not_list(tmp_path):
    """Through the store, as every stage trains: StageRun holds the notebook's run to the stage's plan."""
    from lib import cache
    from lib.notebook import StageRun
    from lib.plan import PlanDrift
    from lib.stages import p5_mnist_gan as p5

    run = StageRun(p5, "smoke", {}, tmp_path / "out")
    try:
        with pytest.raises(PlanDrift, match="p5_mnist_gan trains 'an unplanned model'"):
            cache.cached("an unplanned model", {}, lambda: {})
        with pytest.raises(PlanDrift, match="lists models the run did not train"):
            run.write_claims([])
    finally:
        cache.on_train(None)
