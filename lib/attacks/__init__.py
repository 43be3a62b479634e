"""Batched, device-agnostic attacks with one contract: ``attack(model, x, y, **params) -> x_adv``.

``x_adv`` has x's shape and dtype, lies in [0, 1] and (for budgeted attacks) inside the budget;
the model's train/eval mode and ``requires_grad`` flags are restored; no loop runs over samples.
"""

from lib.attacks.autoattack import VERSIONS as AUTOATTACK_VERSIONS
from lib.attacks.autoattack import autoattack
from lib.attacks.common import eval_mode
from lib.attacks.gradient import bim, fgm, fgsm, iterates, mim, pgd
from lib.attacks.minimal import cw_l2, deepfool
from lib.attacks.threat import L2Ball, LinfBall, l2_distance, per_sample_norm, threat
from lib.errors import require

ATTACKS = {"fgsm": fgsm, "fgm": fgm, "bim": bim, "pgd": pgd, "mim": mim, "deepfool": deepfool, "cw_l2": cw_l2, "autoattack": autoattack}


def check_autoattack_settings(version: str, iterations: int, eps: list | None = None, allowed: list | None = None) -> None:
    """Validate a stage config's AutoAttack settings (here, not in :mod:`lib.attacks.autoattack`,
    whose source is part of every stored AutoAttack evaluation's key): its version, its iteration count and, where the
    stage runs AutoAttack at chosen budgets, that ``eps`` is null or a non-empty subset of ``allowed``."""
    require(version in AUTOATTACK_VERSIONS, f"autoattack must be one of {', '.join(AUTOATTACK_VERSIONS)}, got '{version}'")
    require(int(iterations) >= 1, f"autoattack_iterations must be >= 1, got {iterations}")
    if allowed is not None:
        require(eps is None or (len(eps) > 0 and set(eps) <= set(allowed)),
                f"autoattack_eps must be a non-empty subset of {sorted(allowed)} (or null), got {eps}")


def autoattack_budgets(eps: list | None, allowed: list) -> list:
    """The budgets AutoAttack runs at: ``eps`` where chosen, else every one of ``allowed``."""
    return list(allowed if eps is None else eps)


def get(name: str):
    """The attack function called ``name``."""
    require(name in ATTACKS, f"unknown attack '{name}'; known: {', '.join(sorted(ATTACKS))}")
    return ATTACKS[name]


__all__ = [
    "ATTACKS", "get", "fgsm", "fgm", "bim", "pgd", "mim", "deepfool", "cw_l2", "autoattack", "autoattack_budgets", "check_autoattack_settings", "iterates",
    "eval_mode", "LinfBall", "L2Ball", "threat", "per_sample_norm", "l2_distance",
]
