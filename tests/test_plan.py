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


def test_a_stage_run_stops_on_a_model_outside_its_units(tmp_path):
    """Through the store, as every stage trains: StageRun holds the notebook's run to the stage's units."""
    from lib import cache
    from lib.notebook import StageRun
    from lib.stages import p5_mnist_gan as p5
    from lib.units import PlanDrift

    run = StageRun(p5, "smoke", {}, tmp_path / "out")
    try:
        with pytest.raises(PlanDrift, match="p5_mnist_gan trains 'an unplanned model' outside the units of its plan"):
            cache.cached("an unplanned model", {}, lambda: {})
        with pytest.raises(PlanDrift, match="lists units the run did not obtain: phase 1: D"):
            run.write_claims([])
    finally:
        cache.on_train(None)


@pytest.mark.parametrize("profile", ["smoke", "cpu", "paper"])
def test_every_unit_can_be_trained_and_lists_what_it_builds_on(profile):
    """The plan is the list of units: each has a fit, its dependencies come before it, its name is its store name."""
    for stage in stages.names():
        plan = P.plan_stage(stage, _params(stage, profile))
        names = [m.name for m in plan.models]
        assert len(set(names)) == len(names)
        for i, m in enumerate(plan.models):
            assert callable(m.fit) and set(m.deps) <= set(names[:i]), (stage, m.name)


def test_the_makespan_of_the_cpu_profile_falls_with_workers(capsys):
    assert P.main(["p5_mnist_gan", "compare", "--profile", "cpu", "--workers", "1", "2", "8"]) == 0
    out = capsys.readouterr().out
    assert "makespan (the probe's estimates)" in out and "longest chain" in out
    rows = [line.split() for line in out.splitlines() if line.strip().startswith(("1 ", "2 ", "8 "))]
    assert len(rows) == 6  # two tables (probe, recorded) of three rows
