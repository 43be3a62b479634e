"""Validity gates and the verdict rule, on hand cases."""

from __future__ import annotations

import json
import math

import pytest

from lib import claims as C
from lib import stages
from lib.errors import ConfigError
from lib.intervals import Interval


def test_a_converged_and_an_unconverged_history():
    flat = C.converged("BIM(10)-Adv", [90.0, 95.0, 97.1, 97.3, 97.4])  # best 97.1 before, 97.4 after: +0.3
    rising = C.converged("Proposed", [40.0, 44.0, 47.0, 51.0])  # 51 over 44: +7.0
    assert flat.passed and flat.value == pytest.approx(0.3) and flat.threshold == 0.5
    assert not rising.passed and rising.value == pytest.approx(7.0)
    assert not C.converged("short", [50.0, 50.1]).passed  # two epochs cannot show convergence
    stopped = C.converged("ResNet18", [50.0, 60.0], early_stopped=True)
    assert stopped.passed and "early stopping" in stopped.gate


def test_a_curve_that_oscillates_converged_and_one_that_climbs_did_not():
    """The convergence rule is early stopping's (patience 2, minimum gain 0.5 point), applied after the
    fact: noise of a few validation images is not a climb (p3's Proposed in the committed run, 500 images);
    a curve still setting new bests is (compare's FGSM-AT, 1,000 images)."""
    oscillating = C.converged("Proposed", [97.4, 97.6, 97.6, 97.2, 97.2, 97.8])  # moved 0.6, new best +0.2
    climbing = C.converged("FGSM-AT", [78.7, 79.1, 78.4, 80.8, 81.7, 82.5])  # new best +1.7
    assert oscillating.passed and oscillating.value == pytest.approx(0.2)
    assert not climbing.passed and climbing.value == pytest.approx(1.7)
    assert C.converged("falls", [80.0, 85.0, 83.0, 82.0]).passed  # no new best (the floor gates catch a collapse)
    assert math.isnan(C.improvement([1.0, 2.0], 2))


def test_movement_counts_the_whole_tail_not_only_its_ends():
    assert C.movement([10, 20, 10], 2) == 10  # back where it was two epochs ago, but it moved
    assert math.isnan(C.movement([1.0], 2))
    assert not C.plateaued("G's accuracy", [80, 60, 50, 45, 44.5]).passed  # 60 -> 44.5 over three epochs
    assert C.plateaued("G's accuracy", [80, 45, 44.8, 44.6, 44.5]).passed


@pytest.mark.parametrize(
    "ours,paper,stand_in,same,passed,threshold",
    [
        (97.5, 99.2, False, None, True, 97.2),  # MNIST: within 2 points of the paper's
        (96.9, 99.2, False, None, False, 97.2),
        (86.0, 75.4, True, None, True, 85.0),  # stand-in: the 85% floor, whatever the paper's number
        (84.9, None, True, None, False, 85.0),
        (80.0, None, True, 82.5, True, 79.5),  # or within 3 points of this stage's converged clean run
        (79.0, None, True, 82.5, False, 79.5),
    ],
)
def test_clean_accuracy_floor_met_and_missed(ours, paper, stand_in, same, passed, threshold):
    g = C.clean_accuracy("Baseline", ours, paper, "MNIST" if not stand_in else "Fashion-MNIST", stand_in, same)
    assert g.passed is passed and g.threshold == pytest.approx(threshold)


def test_not_testable_if_and_only_if_a_gate_failed():
    ok, bad = C.at_least("clean acc (%)", 98.0, 97.0), C.at_least("clean acc (%)", 90.0, 97.0)
    assert C.Claim("x", 1.0, 2.0, held=True, gates=[ok]).verdict == "held"
    assert C.Claim("x", 1.0, 2.0, held=False, gates=[ok]).verdict == "did not hold"
    assert C.Claim("x", 1.0, 2.0, held=False, gates=[ok, bad]).verdict == "not testable"
    assert C.Claim("x", 1.0, 2.0, held=True, gates=[bad]).verdict == "not testable"
    assert C.Claim("x", None, 2.0, held=True).verdict == "held"  # no precondition: always testable
    assert not C.at_least("nan", math.nan, 0.0).passed and not C.at_most("nan", math.nan, 1.0).passed


def test_floors_are_not_decided_by_float32_rounding():
    """A difference of float32 accuracies lands a hair off its exact value: it must not decide the gate."""
    import torch

    gap = 100 * float(torch.tensor(0.3925) - torch.tensor(0.3825))  # exactly 1 point; float32 reads 1.0000020...
    assert gap != 1.0 and C.at_most("moved (points)", gap, 1.0).passed
    assert C.at_least("clean (%)", 96.99999, 97.0).passed and not C.at_least("clean (%)", 96.99, 97.0).passed
    assert C.at_most("gap (points)", 3.00001, 3.0).passed and not C.at_most("gap (points)", 3.001, 3.0).passed


def test_claims_json_md_and_counts(tmp_path):
    claims = [
        C.Claim(
            "Proposed within 5 points of BIM(10)-Adv under BIM(10)",
            -3.1,
            -7.5,
            held=False,
            gates=[
                C.converged("Proposed", [60, 70, 70.2, 70.4]),
                C.at_least("BIM(10)-Adv under BIM(10) (%)", 71.8, 80.0),
            ],
        ),
        C.Claim("cheaper than min-max", 0.19, 0.21, held=True, gates=[C.at_least("epochs timed", 2, 2)]),
        C.Claim("degrades slower than the base", None, "5 of 5 eps", held=False),
    ]
    C.write(claims, tmp_path)
    blob = json.loads((tmp_path / "claims.json").read_text())
    assert [c["verdict"] for c in blob] == ["not testable", "held", "did not hold"]
    assert set(blob[0]) == {
        "claim",
        "verdict",
        "paper",
        "ours",
        "rule",
        "interval",
        "n_images",
        "n_seeds",
        "caveat",
        "gates",
    }
    assert blob[0]["gates"][1] == {
        "gate": "BIM(10)-Adv under BIM(10) (%)",
        "value": 71.8,
        "threshold": 80.0,
        "pass": False,
    }
    assert C.counts(claims) == {
        "claims_held": 1,
        "claims_did_not_hold": 1,
        "claims_inconclusive": 0,
        "claims_not_testable": 1,
        "claims_not_run": 0,
    }
    md = (tmp_path / "claims.md").read_text()
    assert md.startswith(
        "Answer: **replicates in part** — decisive claim: cheaper than min-max: paper 0.19, ours 0.21 (held)"
    )
    assert "**3 claims: 1 held, 1 did not hold, 0 inconclusive, 1 not testable, 0 not run.**" in md
    assert "- **not testable** — Proposed within 5 points" in md
    assert "Not testable because: BIM(10)-Adv under BIM(10) (%): 71.8 (threshold 80) FAIL" in md


def test_convergence_from_a_training_history():
    moving = [{"epoch": e, "val_acc": a} for e, a in enumerate([0.80, 0.90, 0.94, 0.96], 1)]
    flat = [{"epoch": e, "val_acc": a} for e, a in enumerate([0.80, 0.95, 0.953, 0.951], 1)]
    stopped = [*moving[:3], {**moving[3], "early_stopped": True}]
    assert not C.converged_history("m", moving).passed and C.converged_history("m", moving).value == pytest.approx(6.0)
    assert C.converged_history("m", flat).passed
    assert C.converged_history("m", stopped).passed and "early stopping" in C.converged_history("m", stopped).gate
    assert not C.converged_history("m", [{"epoch": 1, "train_acc": 0.5}]).passed  # no validation record: NaN fails


def test_metrics_take_the_claims_counts(tmp_path):
    from lib.report import ResultsWriter, metric_prefix

    out = ResultsWriter(tmp_path)
    out.metrics({"a": 1.0}, {}, {})
    out.add_metrics({"claims_held": 2, "claims_did_not_hold": 0, "claims_not_testable": 1})
    assert json.loads((tmp_path / "metrics.json").read_text()) == {
        "a": 1.0,
        "claims_held": 2,
        "claims_did_not_hold": 0,
        "claims_not_testable": 1,
    }
    with pytest.raises(ConfigError, match="at most 20"):
        out.add_metrics({f"m{i}": 1.0 for i in range(20)})
    full = ResultsWriter(tmp_path / "full", metric_prefix("p3_single_step_reuse"))
    full.metrics({f"m{i}": 1.0 for i in range(20)}, {}, {})  # 20 of the stage's own numbers
    full.add_metrics(C.counts([]))  # the five counts come on top of them
    named = json.loads((tmp_path / "full" / "metrics.json").read_text())
    assert len(named) == 25 and {"p3.m0", "p3.claims_held"} <= named.keys()  # the counts are not stage numbers


def test_movement_of_float32_accuracies_is_not_below_its_threshold_by_rounding():
    import torch

    curve = [
        100 * float(torch.tensor(x, dtype=torch.float32)) for x in (0.777, 0.770, 0.767, 0.772)
    ]  # 10 of 1,000 digits
    assert C.movement(curve, 3) == 1.0 and not C.plateaued("G", curve).passed


@pytest.mark.parametrize(
    "rule,quantity,held",
    [
        (C.above(0.0), 0.2, True),
        (C.above(0.0), 0.0, False),  # "beats": a tie is not a win
        (C.not_below(-5.0), -5.0, True),
        (C.not_below(-5.0), -5.2, False),
        (C.below(0.5), 0.49, True),
        (C.not_above(1.10), 1.1000001, True),  # float noise at the margin does not decide
        (C.not_above(1.10), 1.11, False),
        (C.above(0.0), math.nan, False),  # no number: not held
        (C.above(0.0), None, False),
        (C.NONE_FLAGGED, [], True),
        (C.NONE_FLAGGED, ["PGN"], False),
        (C.Rule("==", "resnet18"), "resnet50", False),
    ],
)
def test_a_rule_decides_its_quantity_against_its_margin(rule, quantity, held):
    assert rule.holds(quantity) is held


def test_an_unknown_comparison_is_refused():
    with pytest.raises(ValueError, match="unknown comparison"):
        C.Rule("~", 1.0)


def test_a_spec_is_decided_on_the_result_it_is_given():
    """The spec holds no verdict of its own: the same spec on two results, two verdicts; a gate that
    fails makes it not testable; a spec that does not apply gives no claim."""
    spec = C.Spec(
        "A beats B (points)",
        quantity=lambda r: 100 * (r["A"] - r["B"]),
        rule=C.above(1.0),
        gates=lambda r: [C.at_least("A's clean accuracy (%)", r["clean"], 85.0)],
        paper=3.2,
        shown=lambda r: f"{100 * r['A']:.1f} vs {100 * r['B']:.1f}",
        applies=lambda r: "B" in r,
    )
    win, loss = {"A": 0.52, "B": 0.50, "clean": 90.0}, {"A": 0.505, "B": 0.50, "clean": 90.0}
    (c1,), (c2,) = C.evaluate([spec], win), C.evaluate([spec], loss)
    assert (c1.verdict, c1.ours, c1.paper) == ("held", "52.0 vs 50.0", 3.2)
    assert c2.verdict == "did not hold"
    assert C.evaluate([spec], {**win, "clean": 80.0})[0].verdict == "not testable"
    assert C.evaluate([spec], {"A": 0.5, "clean": 90.0}) == []


def test_a_claim_not_run_is_listed_as_not_run_with_no_constant_gate():
    (c,) = C.evaluate(
        [C.not_run("ablation: gradient matters most", "no gradient", "the ablation is not in this profile")], {}
    )
    assert c.verdict == "not run" and c.ours is None and c.gates == []
    assert "Not run: the ablation is not in this profile" in c.markdown()
    assert "ours —" in c.markdown() and "| no gradient | — | **not run** |" in C.summary_table([c])  # no "None"
    assert C.counts([c])["claims_not_run"] == 1 and C.counts([c])["claims_not_testable"] == 0


def _interval(low: float, high: float) -> Interval:
    return Interval((low + high) / 2, low, high, "hand case", 500, 3)


@pytest.mark.parametrize(
    "low,high,verdict",
    [(1.5, 4.0, "held"), (-3.0, 0.5, "did not hold"), (0.2, 2.5, "inconclusive"), (1.0, 2.0, "inconclusive")],
)
def test_the_interval_decides_the_verdict_against_the_margin(low, high, verdict):
    """ "beats" = more than 1 point: held only when the whole interval is above 1; a point estimate that
    clears the margin does not decide it when the interval straddles it."""
    claim = C.Claim("A beats B (points)", 3.0, 1.35, held=True, interval=_interval(low, high), rule=C.above(1.0))
    assert claim.verdict == verdict
    blob = claim.to_json()
    assert blob["interval"]["low"] == low and blob["rule"] == {"op": ">", "margin": 1.0}
    assert (blob["n_images"], blob["n_seeds"]) == (500, 3)


def test_a_verdict_line_shows_the_interval_and_what_the_claim_measured_beside_the_paper():
    """A claim whose measurement is more than the interval's number (each model's value, a count) shows both:
    the interval decides, the measurement sits beside the paper's value; a plain number shows the interval only."""
    counted = C.Claim(
        "PGN is on the outer curve",
        "2 of 2",
        "0 of 2",
        held=False,
        interval=_interval(-1.2, -0.8),
        rule=C.not_below(0.0),
    )
    assert counted.ours_text() == "-1.00 [-1.20, -0.80] (margin >= 0); 0 of 2"
    assert "ours -1.00 [-1.20, -0.80] (margin >= 0); 0 of 2, paper 2 of 2" in counted.markdown()
    assert "| -1.00 [-1.20, -0.80] (margin >= 0); 0 of 2 |" in C.summary_table([counted])
    plain = C.Claim("A beats B (points)", 3.0, 1.35, held=True, interval=_interval(1.5, 4.0), rule=C.above(1.0))
    assert plain.ours_text() == "2.75 [1.50, 4.00] (margin > 1)"


def test_a_failed_gate_wins_over_an_interval():
    bad = C.at_least("A converged (1 = yes)", 0, 1)
    claim = C.Claim("A beats B", 3.0, 5.0, held=True, gates=[bad], interval=_interval(4.0, 6.0), rule=C.above(1.0))
    assert claim.verdict == "not testable"


def test_the_four_verdicts_and_not_run_are_counted_apart():
    ok = C.at_least("gate", 1, 1)
    claims = [
        C.Claim("a", 1, 2, held=True, gates=[ok], interval=_interval(1.5, 3.0), rule=C.above(1.0)),
        C.Claim("b", 1, 2, held=True, gates=[ok], interval=_interval(-2.0, 0.5), rule=C.above(1.0)),
        C.Claim("c", 1, 2, held=True, gates=[ok], interval=_interval(0.5, 1.5), rule=C.above(1.0)),
        C.Claim("d", 1, 2, held=True, gates=[C.at_least("gate", 0, 1)]),
        C.Claim("e", 1, None, held=False, ran=False),
    ]
    assert C.counts(claims) == {
        "claims_held": 1,
        "claims_did_not_hold": 1,
        "claims_inconclusive": 1,
        "claims_not_testable": 1,
        "claims_not_run": 1,
    }


@pytest.mark.parametrize("stage", stages.names())
def test_every_stage_states_its_claims_as_specs(stage):
    """No stage decides a claim itself: its claims are Specs (for every profile) that lib.claims evaluates."""
    import inspect

    from lib.params import stage_config

    module = stages.get(stage).load()
    for profile in ("smoke", "cpu", "paper"):
        cfg = stage_config(stage, profile)
        args = [cfg] if stage != "p2_pgn" else ["Fashion-MNIST", cfg]
        specs = module.claim_specs(*args)
        assert specs and all(isinstance(s, C.Spec) for s in specs)
    assert "held=" not in inspect.getsource(module)


def test_the_regime_gate_met_and_missed():
    """p4's case: the paper's undefended ResNet18 keeps 39.5% under FGSM; ours 92.7% is not the paper's test."""
    assert not C.matched_regime("ResNet18 before", "FGSM", 92.7, 39.5).passed
    assert C.matched_regime("ResNet18 before", "FGSM", 45.0, 39.5).passed
    assert C.matched_regime("ResNet18 before", "FGSM", 29.5, 39.5).passed  # 10 points: the edge counts
    assert "matched attack strength" in C.matched_regime("m", "FGSM", 50.0, 39.5).gate


def test_a_masked_attack_is_flagged_beside_the_verdict():
    both = C.masked("BIM(10)", {"Proposed": (45.1, 0.2), "ATDA": (40.0, 0.0)})
    assert both == "both masked under BIM(10): AutoAttack 0.2% vs 0.0%"
    one = C.masked("BIM(10)", {"Proposed": (45.1, 0.2), "BIM(10)-Adv": (60.0, 57.0)})
    assert one == "Proposed masked under BIM(10): AutoAttack 0.2%"
    assert C.masked("BIM(10)", {"A": (60.0, 56.0), "B": (50.0, 45.5)}) == ""  # 4 and 4.5 points: not masked
    claim = C.Claim("Proposed beats ATDA under BIM(10)", 5.0, 5.1, True, caveat=both)
    assert "— both masked under BIM(10): AutoAttack 0.2% vs 0.0%" in claim.markdown()


@pytest.mark.parametrize(
    "verdicts,answer",
    [
        (["held", "held", "not testable"], "replicates"),
        (["held", "not testable", "not testable", "not run"], "replicates in part"),  # too few testable
        (["held", "did not hold", "not run"], "replicates in part"),
        (["held", "inconclusive"], "replicates in part"),
        (["did not hold", "inconclusive", "not testable"], "does not replicate"),
        (["inconclusive", "not testable", "not run"], "not testable at this scale"),
        ([], "not testable at this scale"),
    ],
)
def test_one_answer_per_paper(verdicts, answer):
    assert C.answer(verdicts) == answer


def test_the_decisive_claim_is_the_first_decided_one():
    claims = [{"claim": "a", "verdict": "not testable"}, {"claim": "b", "verdict": "inconclusive"}]
    assert C.decisive(claims)["claim"] == "b"
    assert C.decisive([*claims, {"claim": "c", "verdict": "did not hold"}])["claim"] == "c"
    assert C.decisive([{"claim": "a", "verdict": "not run"}]) is None
    ours = [{"claim": "Ours: a", "verdict": "held"}, {"claim": "MNIST, ours: b", "verdict": "held"}]
    assert C.decisive([*ours, {"claim": "c", "verdict": "did not hold"}])["claim"] == "c"  # the paper's claim first
    assert C.decisive([*ours, {"claim": "c", "verdict": "inconclusive"}])["claim"] == "Ours: a"  # else a decided check


def test_the_answer_line_quotes_the_interval_and_the_measurement_beside_the_papers():
    record = {
        "claim": "PGN has the highest rho_cw",
        "verdict": "did not hold",
        "paper": "PGN highest",
        "ours": "FGM-AT 1.331, PGN 0.884",
        "interval": {"estimate": -0.4876, "low": -0.612, "high": -0.3733},
    }
    assert C.evidence(record) == (
        "PGN has the highest rho_cw: paper PGN highest, ours -0.49 [-0.61, -0.37]; FGM-AT 1.331, PGN 0.884 (did not hold)"
    )
    assert C.evidence(record | {"ours": -0.49}).endswith("ours -0.49 [-0.61, -0.37] (did not hold)")


def test_a_timing_claim_is_gated_by_the_spread_of_its_per_round_ratios_not_their_count():
    pgn, fgm = [10.0, 10.4, 9.9, 10.1, 10.2], [5.0, 5.2, 5.0, 5.0, 5.1]
    steady = C.steady("PGN / FGM-AT", pgn, fgm)
    assert all(g.passed for g in steady) and steady[1].value == pytest.approx(0.01, abs=1e-2)
    drifted = C.steady("PGN / FGM-AT", [10.0, 14.0, 9.9, 13.0, 10.2], [5.0, 7.0, 4.95, 6.5, 5.1])  # both slowed alike
    assert all(g.passed for g in drifted)
    once = C.steady("PGN / FGM-AT", [10.0, 14.0, 9.9, 10.1, 10.2], fgm)  # one round slowed on one side: the median
    assert all(g.passed for g in once)  # the claim reads is not moved by it, and neither is the gate
    often = C.steady("PGN / FGM-AT", [10.0, 14.0, 9.9, 13.5, 10.2, 14.2, 10.0], [5.0] * 7)  # a loaded machine
    assert often[0].passed and not often[1].passed and often[1].value > C.TIMING_SPREAD
    assert not C.steady("PGN / FGM-AT", [10.0, 10.1], [5.0, 5.0])[0].passed  # two rounds: no median to trust
    with pytest.raises(ValueError):
        C.steady("PGN / FGM-AT", [10.0, 10.1, 10.0], [5.0, 5.0])  # rounds must pair up


def test_counts_add_to_a_metrics_file_that_holds_a_nan(tmp_path):
    """metrics.json writes NaN as null; adding the counts must not read that null back as a bad number."""
    from lib.report import ResultsWriter

    out = ResultsWriter(tmp_path)
    out.metrics({"rho_cw_pgn": math.nan, "a": 1.0}, {}, {})
    out.add_metrics(C.counts([]))
    assert json.loads((tmp_path / "metrics.json").read_text())["rho_cw_pgn"] is None


def test_the_summary_spells_out_failed_gates_without_their_explanations_and_counts_the_passed():
    gates = [
        C.at_least("Baseline converged (gain of the last two epochs (points) over the best before them)", 0.2, 0.5),
        C.at_least("Baseline clean accuracy (%)", 90.0, 85.0),
    ]
    claim = C.Claim("a claim | with a pipe", 1.0, 2.0, True, gates=gates)
    row = C.summary_table([claim]).splitlines()[-1]
    assert "**failed:** Baseline converged: 0.2 (threshold 0.5); 1 passed" in row
    assert "a claim \\| with a pipe" in row and "gain of" not in row
    assert "gain of the last two epochs (points)" in claim.markdown()  # claims.md keeps the whole gate
