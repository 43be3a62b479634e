"""Independent reference implementations (foolbox 3.3.4, dev extra) for our attacks.

foolbox's minimisation attacks (C&W) return an all-zeros image where they find nothing; such
samples are handed back unchanged here, so they count as failures rather than huge "successes".
"""

from __future__ import annotations

import torch
import torch.nn as nn

from lib.attacks import eval_mode
from lib.cache import remembered
from lib.errors import require

# our attack name -> (foolbox class name, mapping of our params to its constructor)
_FOOLBOX = {
    "fgsm": ("FGSM", lambda p: {}),
    "fgm": ("FGM", lambda p: {}),
    "pgd_linf": ("LinfPGD", lambda p: {"steps": p["steps"], "abs_stepsize": p["step_size"]}),
    "pgd_l2": ("L2PGD", lambda p: {"steps": p["steps"], "abs_stepsize": p["step_size"]}),
    "bim": (
        "LinfBasicIterativeAttack",
        lambda p: {"steps": p["steps"], "abs_stepsize": p.get("step_size", p["eps"] / p["steps"])},
    ),
    "mim_l2": ("L2BasicIterativeAttack", lambda p: {"steps": p["steps"], "abs_stepsize": p["step_size"]}),
    "deepfool": ("L2DeepFoolAttack", lambda p: {"steps": p.get("steps", 50)}),
    "cw_l2": (
        "L2CarliniWagnerAttack",
        lambda p: {"steps": p.get("steps", 100), "binary_search_steps": p.get("binary_steps", 9)},
    ),
}
NAMES = tuple(_FOOLBOX)


def foolbox_attack(model: nn.Module, x: torch.Tensor, y: torch.Tensor, name: str, **params) -> torch.Tensor:
    """foolbox's counterpart of our attack ``name`` on the same model and batch; returns x_adv."""
    import foolbox as fb

    require(name in _FOOLBOX, f"no foolbox counterpart for '{name}'; known: {', '.join(NAMES)}")
    cls, args = _FOOLBOX[name]

    def craft() -> torch.Tensor:
        attack = getattr(fb.attacks, cls)(**args(params))
        with eval_mode(model):
            _, adv, _ = attack(fb.PyTorchModel(model, bounds=(0, 1)), x, y, epsilons=params.get("eps"))
        gave_up = adv.flatten(1).abs().sum(1) == 0
        return torch.where(gave_up.view(-1, *([1] * (x.dim() - 1))), x, adv).detach()

    return remembered("foolbox", craft, model, x, y, name, params, fb.__version__).to(x.device)
