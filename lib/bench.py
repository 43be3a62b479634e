"""``make bench``: our attacks vs foolbox on the same trained model and batch (time and strength).

Writes ``results/bench/attacks.csv`` and ``.md``. Timings are wall-clock seconds on the machine
named in the file, best of ``repeats`` runs.
"""

from __future__ import annotations

import sys
import time

import pandas as pd
import torch

import lib.attacks as A
import lib.data as D
import lib.models as M
from lib.crosscheck import foolbox_attack
from lib.report import ResultsWriter
from lib.runtime import REPO_ROOT, device, device_name, seed_everything
from lib.train import TrainConfig, train

CASES = [  # (row label, our attack, its params, foolbox name, minimal-perturbation attack?)
    ("FGSM Linf eps .1", A.fgsm, dict(eps=0.1), "fgsm", False),
    ("FGM L2 eps 1.5", A.fgm, dict(eps=1.5), "fgm", False),
    ("BIM(10) Linf eps .1", A.bim, dict(eps=0.1, steps=10), "bim", False),
    ("PGD-40 Linf eps .1", A.pgd, dict(eps=0.1, steps=40, step_size=0.01), "pgd_linf", False),
    ("PGD-40 L2 eps 1.5", A.pgd, dict(eps=1.5, steps=40, step_size=0.1, norm="l2"), "pgd_l2", False),
    ("MIM-20 L2 eps 1.5 (fb: L2 BIM)", A.mim, dict(eps=1.5, steps=20, step_size=0.15, norm="l2"), "mim_l2", False),
    ("DeepFool-50 L2", A.deepfool, dict(steps=50), "deepfool", True),
    ("C&W-L2 100 x 5", A.cw_l2, dict(steps=100, binary_steps=5), "cw_l2", True),
]


def _timed(repeats: int, fn, *args, **kwargs):
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn(*args, **kwargs)
        best = min(best, time.perf_counter() - t0)
    return best, out


def _strength(model, x, y, x_adv) -> tuple[float, float]:
    with torch.no_grad():
        fooled = model(x_adv).argmax(1) != y
    norms = (x_adv - x).flatten(1).norm(dim=1)[fooled]
    return 1 - float(fooled.float().mean()), float(norms.mean()) if len(norms) else float("nan")


def run(n: int = 300, repeats: int = 2, width: int = 16) -> pd.DataFrame:
    """Time and strength of every attack, ours vs foolbox, on one MnistCNN and ``n`` test digits."""
    seed_everything(0)
    ds = D.load("mnist5k")
    model = M.build("mnist_cnn", ds.shape, 10, width=width, hidden=4 * width).to(device())
    train(model, D.loader(D.subset(ds.train, 4000, 0), 64, True, with_index=True), TrainConfig(epochs=3, lr=1e-3))
    x, y = (t.to(device()) for t in D.tensors(D.subset(ds.test, n, 1)))
    with torch.no_grad():
        keep = model(x).argmax(1) == y
    rows = []
    for label, ours, params, fb_name, minimal in CASES:
        xs, ys = (x[keep], y[keep]) if minimal else (x, y)
        t_ours, adv_ours = _timed(repeats, ours, model, xs, ys, **params)
        t_fb, adv_fb = _timed(repeats, foolbox_attack, model, xs, ys, fb_name, **params)
        acc_o, l2_o = _strength(model, xs, ys, adv_ours)
        acc_f, l2_f = _strength(model, xs, ys, adv_fb)
        rows.append({
            "attack": label, "n": len(ys), "ours_s": t_ours, "foolbox_s": t_fb, "speedup (foolbox/ours)": t_fb / t_ours,
            "ours_acc": acc_o, "foolbox_acc": acc_f, "ours_mean_l2_success": l2_o, "foolbox_mean_l2_success": l2_f,
        })
    return pd.DataFrame(rows)


def main() -> int:
    df = run()
    machine = f"{device_name()}, torch {torch.__version__}"
    caption = (f"Attack benchmark, ours vs foolbox 3.3.4, same trained MnistCNN (width 16) and batch of 300 mnist5k test digits; "
               f"best of 2 wall-clock runs on {machine}. Accuracy after the attack (lower = stronger); mean L2 over "
               "successful examples (lower = stronger for minimal attacks; DeepFool/C&W run on correctly classified digits).")
    ResultsWriter(REPO_ROOT / "results" / "bench").table("attacks", df, caption)
    print(df.to_string(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
