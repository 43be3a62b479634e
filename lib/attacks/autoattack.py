"""AutoAttack (Croce & Hein, 2020), the field's reference robustness evaluation, behind our attack
contract: ``autoattack(model, x, y, eps, norm, version) -> x_adv``.

The attacks themselves are the reference implementation (PyPI ``pyautoattack``); this module only
checks the input, picks the version, keeps the model's mode and silences the library's logging.
``version="standard"``: APGD-CE, APGD-T (9 target classes), FAB-T, Square (5,000 queries), what
RobustBench reports. ``version="apgd-ce+t"``: the standard version's first two attacks, which find
nearly all of its adversarial examples at a fraction of the cost (Square alone costs 5,000 queries
per surviving image).
"""

from __future__ import annotations

import logging

import torch
import torch.nn as nn

from lib.attacks.common import attack, check_inputs
from lib.errors import require
from lib.runtime import DryRun

VERSIONS = ("standard", "apgd-ce+t")
NORMS = {"linf": "Linf", "l2": "L2"}


@attack
def autoattack(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    norm: str = "linf",
    version: str = "standard",
    iterations: int = 100,
    targets: int = 9,
    seed: int = 0,
    batch_size: int = 500,
) -> torch.Tensor:
    """Adversarial examples of AutoAttack at ``eps`` (``norm`` linf | l2) for images in [0, 1].

    ``iterations`` (per APGD and FAB run, the reference 100; a dry run caps it and Square's queries) and ``targets`` (APGD-T's target classes, the
    reference 9, at most classes - 1) exist for CI-sized runs; the defaults are the reference's.
    Images the model already misclassifies come back unchanged. The caller's random state is left
    as it was (the reference reseeds torch's generators with ``seed``).
    """
    require(norm in NORMS, f"unknown norm '{norm}' for AutoAttack; choose one of {', '.join(NORMS)}")
    require(version in VERSIONS, f"unknown AutoAttack version '{version}'; choose one of {', '.join(VERSIONS)}")
    require(isinstance(iterations, int) and iterations >= 1, f"iterations must be an integer >= 1, got {iterations}")
    require(isinstance(targets, int) and targets >= 1, f"targets must be an integer >= 1, got {targets}")
    check_inputs(x, y, eps=eps)
    if eps == 0 or len(y) == 0:
        return x.clone()
    from pyautoattack import AutoAttack

    logging.getLogger("auto-attack").setLevel(logging.ERROR)
    classes = int(model(x[:1]).shape[1])
    aa = AutoAttack(
        model,
        norm=NORMS[norm],
        eps=float(eps),
        device=x.device,
        seed=seed,
        version="standard" if version == "standard" else "custom",
        attacks=None if version == "standard" else ["apgd-ce", "apgd-t"],
    )
    aa.verbose = False
    aa.apgd.n_restarts, aa.apgd_targeted.n_restarts = 1, 1  # the standard version's settings
    aa.apgd.n_iter = aa.apgd_targeted.n_iter = aa.fab.n_iter = DryRun.iterations(iterations)
    aa.square.n_queries = DryRun.iterations(aa.square.n_queries)  # 5,000 in a real run
    aa.apgd_targeted.n_target_classes = aa.fab.n_target_classes = min(targets, classes - 1)
    with torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []):  # it reseeds torch's generators
        x_adv, _ = aa.run_standard_evaluation(x, y, batch_size=batch_size)
    return _inside(x_adv.to(x.dtype), x, eps, norm)


def _inside(x_adv: torch.Tensor, x: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    """``x_adv`` clipped to [0, 1] and projected into the budget: the reference returns float32
    examples that can sit a rounding error outside it."""
    delta = (x_adv - x).flatten(1)
    if norm == "linf":
        delta = delta.clamp(-eps, eps)
    else:
        norms = delta.norm(dim=1, keepdim=True)
        delta = delta * torch.clamp(eps / norms.clamp_min(1e-12), max=1.0)
    return (x + delta.view_as(x)).clamp(0, 1)


def cost(version: str, classes: int = 10, iterations: int = 100, targets: int = 9) -> float:
    """Forward-backward passes per image that survives every attack (the budgeting unit): APGD-CE
    ``iterations``, APGD-T ``targets`` x ``iterations``; the standard version adds FAB-T and Square."""
    require(version in VERSIONS, f"unknown AutoAttack version '{version}'")
    t = min(targets, classes - 1)
    apgd = iterations * (1 + t)
    return apgd if version == "apgd-ce+t" else apgd + t * iterations + 5000
