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

ATTACKS = {
    "fgsm": fgsm,
    "fgm": fgm,
    "bim": bim,
    "pgd": pgd,
    "mim": mim,
    "deepfool": deepfool,
    "cw_l2": cw_l2,
    "autoattack": autoattack,
}


def autoattack_versions() -> tuple[str, ...]:
    """The AutoAttack versions :func:`autoattack` runs."""
    return AUTOATTACK_VERSIONS


def get(name: str):
    """The attack function called ``name``."""
    require(name in ATTACKS, f"unknown attack '{name}'; known: {', '.join(sorted(ATTACKS))}")
    return ATTACKS[name]


__all__ = [
    "ATTACKS",
    "get",
    "autoattack_versions",
    "fgsm",
    "fgm",
    "bim",
    "pgd",
    "mim",
    "deepfool",
    "cw_l2",
    "autoattack",
    "iterates",
    "eval_mode",
    "LinfBall",
    "L2Ball",
    "threat",
    "per_sample_norm",
    "l2_distance",
]
