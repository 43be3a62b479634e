"""p3: the proposed stored-perturbation source, ATDA's losses, and the paper profile's code path."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lib.errors import ConfigError
from lib.methods import single_step_reuse as method
from lib.params import stage_config
from lib.stages import p3_single_step_reuse as p3


def _config(profile: str, **override) -> p3.Config:
    return stage_config("p3_single_step_reuse", profile, **override)


def test_paper_profile_is_the_papers_setting():
    cfg = _config("paper")
    assert cfg.datasets == {"mnist": 0.3, "fashion_mnist": 0.2}
    assert (cfg.n_train, cfg.n_test, cfg.model_width, cfg.model_hidden) == (None, None, 64, 128)
    assert cfg.step_fraction == 0.1 and cfg.reset_every == 20 and cfg.bim_iterations == list(range(1, 31))


def test_atda_loss_is_finite_and_differentiable():
    src = method.ATDASource(0.3, 10, 1 / 3, 1 / 3, 1.0, 0.9)
    clean = torch.randn(32, 10, requires_grad=True)
    adv = torch.randn(32, 10, requires_grad=True)
    loss = src.extra_loss(clean, adv, torch.arange(32) % 10)
    loss.backward()
    assert torch.isfinite(loss) and clean.grad.abs().sum() > 0 and adv.grad.abs().sum() > 0
    same = src.extra_loss(clean.detach(), clean.detach(), torch.arange(32) % 10)
    assert same >= 0


@pytest.mark.parametrize(
    "bad",
    [
        dict(datasets={"mnist": -0.1}),
        dict(datasets={"svhn": 0.1}),
        dict(defences=["magic"]),
        dict(reset_every=0),
        dict(patience={"proposed": 2}),
        dict(patience={"vanilla": 0}),
        dict(patience={"magic": 2}),
    ],
)
def test_bad_config_is_rejected(bad):
    with pytest.raises(ConfigError):
        p3.Config(**bad).validate()


def _defence(original, bim10, epochs=25, val=(0.97, 0.975, 0.976, 0.977), autoattack=None):
    history = [{"epoch": e, "val_acc": val[min(e - 1, len(val) - 1)]} for e in range(1, epochs + 1)]
    accuracies = {
        "original": original,
        "bim10": bim10,
        "bim30": bim10 - 0.01,
        "pgd": bim10 - 0.02,
        "autoattack": bim10 - 0.03 if autoattack is None else autoattack,
    }
    per_image = {k: (np.arange(1000) < round(v * 1000)).astype(np.int8) for k, v in accuracies.items()}
    return {**accuracies, "history": history, "sec_per_epoch": 1.0, "correct": per_image}


def test_claims_need_converged_models_near_the_papers_clean_accuracy_and_a_full_reset_cycle():
    cfg = _config("cpu")
    results = {
        "mnist5k": {
            "proposed": _defence(0.985, 0.85),
            "atda": _defence(0.975, 0.80),
            "bim10_adv": _defence(0.985, 0.82),
        }
    }
    claims = {c.claim: c for c in p3.claims(results, cfg)}
    beats = claims["MNIST: Proposed beats ATDA under BIM10 (by more than 1 point; Proposed − ATDA, points)"]
    assert beats.verdict == "held" and beats.ours == pytest.approx(5.0)
    level = next(c for k, c in claims.items() if "same level as Iter-Adv" in k)
    assert level.verdict == "held" and level.ours == pytest.approx(3.0)
    weak_reference = {"mnist5k": {**results["mnist5k"], "bim10_adv": _defence(0.985, 0.72)}}
    level = next(c for c in p3.claims(weak_reference, cfg) if "same level as Iter-Adv" in c.claim)
    assert (
        level.verdict == "not testable"
        and "BIM(10)-Adv under BIM(10) on MNIST (%): 72 (threshold 80) FAIL" in level.markdown()
    )
    short = {"mnist5k": {d: _defence(v["original"], v["bim10"], epochs=10) for d, v in results["mnist5k"].items()}}
    beats = next(c for c in p3.claims(short, cfg) if "under BIM10" in c.claim)
    assert (
        beats.verdict == "not testable"
        and "past one reset period (20 epochs; epochs trained): 10 (threshold 21) FAIL" in beats.markdown()
    )


def _defences(single_aa: float, control_aa: float) -> dict:
    r = {d: {"bim10": 0.5, "autoattack": single_aa} for d in p3.SINGLE_STEP}
    return {"mnist5k": {**r, "bim10_adv": {"bim10": 0.7, "autoattack": control_aa}}}


def _control(bim10: float, autoattack: float) -> dict:
    r = _defences(0.0, autoattack)
    r["mnist5k"]["bim10_adv"]["bim10"] = bim10
    return r


def test_masking_diagnosis_says_only_what_its_control_supports():
    masked = p3.masking_diagnosis(_control(0.48, 0.46))  # the control survives and is not masked itself
    assert "gradient masking of their single-step training" in masked and "46.0%" in masked
    assert "not our implementation" not in masked
    control_masked = p3.masking_diagnosis(_control(0.70, 0.46))  # the control 24 points below its BIM(10): masked
    assert "cannot say whether the masking comes from single-step training" in control_masked
    assert "cannot say" in p3.masking_diagnosis(_defences(0.0, 0.05))  # the control broken too: no conclusion
    assert "does not separate" in p3.masking_diagnosis(_defences(0.3, 0.46))  # single-step defences survive
    assert "not diagnosed" in p3.masking_diagnosis({"mnist5k": {"vanilla": {"bim10": 0.1, "autoattack": 0.0}}})


def _timed(seconds: list[float]) -> dict:
    return {
        **_defence(0.98, 0.8),
        "history": [{"epoch": e, "val_acc": 0.97, "seconds": 1.0} for e in range(1, 4)],
        "timing": seconds,
    }


DRIFT = [1.0, 1.3, 1.0, 0.9, 1.25, 1.0]  # the machine's speed round by round: it hits both sides of a round alike


@pytest.mark.parametrize(
    ("proposed", "atda", "verdict"),
    [
        ([0.05 * d for d in DRIFT], [0.1 * d for d in DRIFT], "held"),  # 0.5 in every round, whatever the drift
        ([0.05 * d for d in DRIFT], [0.05 * d for d in DRIFT], "did not hold"),  # level
        ([0.05 * d for d in DRIFT], [0.1, 0.16, 0.1, 0.14, 0.2, 0.1], "not testable"),  # ATDA slowed in 3 rounds
    ],
)
def test_the_cost_claim_is_the_median_per_round_ratio_of_interleaved_timings(proposed, atda, verdict):
    results = {"mnist5k": {"proposed": _timed(proposed), "atda": _timed(atda), "fgsm_adv": _timed(atda)}}
    cheaper = next(c for c in p3.claims(results, _config("cpu")) if c.claim.startswith("Proposed is cheaper than ATDA"))
    assert cheaper.verdict == verdict, cheaper.markdown()
    assert cheaper.interval.method == "median of 6 interleaved rounds"


def test_a_verdict_under_bim_says_when_bim_is_masked_on_both_defences():
    results = {
        "mnist5k": {
            "proposed": _defence(0.985, 0.85, autoattack=0.002),
            "atda": _defence(0.975, 0.80, autoattack=0.0),
            "bim10_adv": _defence(0.985, 0.82),
        }
    }
    beats = next(
        c for c in p3.claims(results, _config("cpu")) if c.claim.startswith("MNIST: Proposed beats ATDA under BIM10")
    )
    assert beats.verdict == "held" and beats.caveat == "both masked under BIM10: AutoAttack 0.2% vs 0.0%"
    assert "held** — MNIST: Proposed beats ATDA under BIM10" in beats.markdown() and "both masked" in beats.markdown()
    assert beats.interval.low > 0 and beats.interval.n_images == 1000


def test_a_gain_claim_covers_every_training_seed_and_gates_each():
    """Proposed's and ATDA's extra seeds enter the interval (two-level bootstrap) and the gates."""
    cfg = _config("cpu")
    assert cfg.seeds == 3 and cfg.seeded == ["proposed", "atda"]

    def seeded(original: float, bims: list[float], epochs: int = 25) -> dict:
        first, *rest = (_defence(original, b, epochs) for b in bims)
        return {**first, "seeds": [{"seed": 1000 * (i + 1), **extra} for i, extra in enumerate(rest)]}

    results = {
        "mnist5k": {
            "proposed": seeded(0.985, [0.85, 0.80, 0.84]),
            "atda": seeded(0.975, [0.80, 0.80, 0.80]),
            "bim10_adv": _defence(0.985, 0.82),
        }
    }
    beats = next(c for c in p3.claims(results, cfg) if "beats ATDA under BIM10" in c.claim)
    assert beats.interval.n_seeds == 3 and "two-level" in beats.interval.method
    assert beats.ours == pytest.approx(3.0)  # the mean over seeds (5, 0, 4), not the first seed's 5
    assert "Proposed seed 2000 (MNIST) converged" in beats.markdown()
    one_seed_stopped = seeded(0.975, [0.80, 0.80, 0.80])
    one_seed_stopped["seeds"][1]["history"] = one_seed_stopped["seeds"][1]["history"][:1]
    gated = {"mnist5k": {**results["mnist5k"], "atda": one_seed_stopped}}
    beats = next(c for c in p3.claims(gated, cfg) if "beats ATDA under BIM10" in c.claim)
    assert beats.verdict == "not testable" and "ATDA seed 2000 (MNIST) converged" in beats.markdown()
