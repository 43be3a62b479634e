"""Checks of a stage config's attack settings (AutoAttack's version, iterations and budgets).

Kept outside ``lib/attacks``: every file there is part of every stored evaluation's key
(:mod:`lib.cache`), and these checks change no evaluation.
"""

from __future__ import annotations

from lib.attacks import autoattack_versions
from lib.errors import require


def check_autoattack_settings(
    version: str, iterations: int, eps: list | None = None, allowed: list | None = None, targets: int = 9
) -> None:
    """Validate a stage config's AutoAttack settings: its version, its iteration count, its number of target
    classes and, where the stage runs AutoAttack at chosen budgets, that ``eps`` is null or a non-empty subset of ``allowed``."""
    require(
        version in autoattack_versions(),
        f"autoattack must be one of {', '.join(autoattack_versions())}, got '{version}'",
    )
    require(int(iterations) >= 1, f"autoattack_iterations must be >= 1, got {iterations}")
    require(1 <= int(targets) <= 9, f"autoattack_targets must be in 1..9, got {targets}")
    if allowed is not None:
        require(
            eps is None or (len(eps) > 0 and set(eps) <= set(allowed)),
            f"autoattack_eps must be a non-empty subset of {sorted(allowed)} (or null), got {eps}",
        )


def autoattack_budgets(eps: list | None, allowed: list) -> list:
    """The budgets AutoAttack runs at: ``eps`` where chosen, else every one of ``allowed``."""
    return list(allowed if eps is None else eps)
