"""``make bench`` (``python -m lib.bench [attacks] [throughput] [store] [--profile P] [--stage S]``).

- ``attacks``: our attacks vs foolbox on the same trained model and batch (time and strength);
- ``throughput``: clean-training images/s of every model a profile trains, at its batch size,
  through the real training loop (on CUDA also with the GPU path of
  :class:`lib.runtime.Acceleration` switched off, and the speed-up);
- ``store``: a stage run twice into a scratch model store: the first run trains and evaluates, the second loads
  every model and evaluation; wall times, their ratio and whether the metrics are identical.

Writes ``results/bench/tables/{attacks,throughput,store}.csv`` and ``.md``. Timings are wall-clock
seconds on the machine named in each caption; attacks: best of ``repeats`` runs.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import pandas as pd
import torch

import lib.attacks as A
import lib.data as D
import lib.models as M
from lib import plan as P
from lib import stages
from lib.crosscheck import foolbox_attack
from lib.report import ResultsWriter
from lib.runtime import REPO_ROOT, Acceleration, device, device_name, seed_everything, synchronize
from lib.train import TrainConfig, train

OUT = REPO_ROOT / "results" / "bench"
SCRATCH = REPO_ROOT / "build" / "bench"

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
        rows.append(
            {
                "attack": label,
                "n": len(ys),
                "ours_s": t_ours,
                "foolbox_s": t_fb,
                "speedup (foolbox/ours)": t_fb / t_ours,
                "ours_acc": acc_o,
                "foolbox_acc": acc_f,
                "ours_mean_l2_success": l2_o,
                "foolbox_mean_l2_success": l2_f,
            }
        )
    return pd.DataFrame(rows)


def autoattack_vs_pgd(n: int = 300, width: int = 16, eps: float = 0.1) -> pd.DataFrame:
    """Seconds per 100 images and accuracy: AutoAttack (APGD-CE + APGD-T, and the standard version)
    against our PGD-20, L∞ eps ``eps``, on the bench's MnistCNN and ``n`` test digits."""
    seed_everything(0)
    ds = D.load("mnist5k")
    model = M.build("mnist_cnn", ds.shape, 10, width=width, hidden=4 * width).to(device())
    train(model, D.loader(D.subset(ds.train, 4000, 0), 64, True, with_index=True), TrainConfig(epochs=3, lr=1e-3))
    x, y = (t.to(device()) for t in D.tensors(D.subset(ds.test, n, 1)))
    cases = [
        ("our PGD-20", A.pgd, dict(eps=eps, steps=20)),
        ("AutoAttack apgd-ce+t", A.autoattack, dict(eps=eps, version="apgd-ce+t")),
        ("AutoAttack standard", A.autoattack, dict(eps=eps, version="standard")),
    ]
    rows = []
    for label, fn, params in cases:
        seconds, x_adv = _timed(1, fn, model, x, y, **params)
        rows.append(
            {
                "attack": label,
                "n": n,
                "s per 100 images": 100 * seconds / n,
                "accuracy": _strength(model, x, y, x_adv)[0],
            }
        )
    df = pd.DataFrame(rows)
    df["time / our PGD-20"] = df["s per 100 images"] / df["s per 100 images"].iloc[0]
    return df


def _machine() -> str:
    return f"{device_name()}, torch {torch.__version__}"


def autoattack() -> pd.DataFrame:
    df = autoattack_vs_pgd()
    caption = (
        f"AutoAttack (pyautoattack 0.2.0) against our PGD-20 (one restart), L∞ eps 0.1, the same trained MnistCNN (width 16) and "
        f"300 mnist5k test digits; one wall-clock run each on {_machine()}. Accuracy after the attack (lower = stronger)."
    )
    return ResultsWriter(OUT).table("autoattack", df, caption).data


def attacks() -> pd.DataFrame:
    df = run()
    caption = (
        f"Attack benchmark, ours vs foolbox 3.3.4, same trained MnistCNN (width 16) and batch of 300 mnist5k test digits; "
        f"best of 2 wall-clock runs on {_machine()}. Accuracy after the attack (lower = stronger); mean L2 over "
        "successful examples (lower = stronger for minimal attacks; DeepFool/C&W run on correctly classified digits)."
    )
    return ResultsWriter(OUT).table("attacks", df, caption).data


# --------------------------------------------------------------------------------------------------
# Training throughput


def training_throughput(model: P.Model, batch_size: int, batches: int = 3, fast: bool = True) -> float:
    """Images/s of clean training of ``model`` at ``batch_size`` through :func:`lib.train.train`
    (one warm-up batch, then ``batches`` timed), with the GPU path on (``fast``) or off."""
    n = batch_size * batches
    split = D.Split(torch.randint(0, 256, (n, *model.shape), dtype=torch.uint8), torch.arange(n) % model.classes)
    net = P.build(model)
    was = Acceleration.fast
    Acceleration.fast = fast
    try:
        cfg = TrainConfig(epochs=1, batch_size=batch_size)
        train(net, D.loader(split, batch_size, shuffle=False, with_index=True), cfg, max_batches=1, desc="warm-up")
        synchronize()
        t0 = time.perf_counter()
        train(net, D.loader(split, batch_size, shuffle=True, with_index=True), cfg, desc="timed")
        synchronize()
        return n / (time.perf_counter() - t0)
    finally:
        Acceleration.fast = was


def throughput(profile: str) -> pd.DataFrame:
    """Clean-training throughput of every (model, batch size) the ``profile``'s stages train."""
    kinds: dict[tuple, list[str]] = {}
    for plan in P.plans(profile):
        for m in plan.models:
            kinds.setdefault((m.model, m.batch_size), []).append(plan.stage)
    gpu = device().type == "cuda"
    rows = []
    for (model, batch), users in kinds.items():
        fast = training_throughput(model, batch)
        row = {"model": model.label(), "batch": batch, "stages": ", ".join(sorted(set(users))), "images/s": fast}
        if gpu:
            row["images/s, GPU path off"] = slow = training_throughput(model, batch, fast=False)
            row["speed-up"] = fast / slow
        rows.append(row)
    df = pd.DataFrame(rows)
    off = (
        "; 'GPU path off' = same code without bf16 autocast, channels-last and on-device data"
        if gpu
        else " (CPU: the GPU path changes nothing here, so there is no on/off comparison)"
    )
    caption = (
        f"Clean-training throughput, profile '{profile}', every model at its batch size, through lib.train.train on "
        f"synthetic images of the model's input shape; 1 warm-up + 3 timed batches on {_machine()}{off}."
    )
    return ResultsWriter(OUT).table(f"throughput_{profile}", df, caption).data


# --------------------------------------------------------------------------------------------------
# The model store's second run


def _numbers(results: Path) -> dict:
    """A stage's numbers (headline and details) without its run's own facts (wall time, date, commit)."""
    details = json.loads((results / "details.json").read_text())
    details.pop("meta", None), details.pop("provenance", None)
    return {"headline": json.loads((results / "metrics.json").read_text()), **details}


def store_speedup(stage: str, profile: str) -> pd.DataFrame:
    """``stage`` run twice into a fresh scratch store: wall times, ratio, identical metrics?"""
    from lib.pipeline import run_stage

    results_root, models_root = SCRATCH / "results", SCRATCH / "models"
    for stored in (models_root / stage, models_root / ".evaluations" / stage):
        shutil.rmtree(stored, ignore_errors=True)
    walls, numbers = [], []
    for _ in range(2):
        t0 = time.perf_counter()
        out = run_stage(stage, profile, results_root=results_root, models_root=models_root)
        walls.append(time.perf_counter() - t0)
        numbers.append(_numbers(out))
    df = pd.DataFrame(
        [
            {
                "stage": stage,
                "profile": profile,
                "first run (trains) s": walls[0],
                "second run (loads) s": walls[1],
                "speed-up": walls[0] / walls[1],
                "metrics identical": numbers[0] == numbers[1],
            }
        ]
    )
    caption = (
        f"Model store: {stage} ({profile} profile) run twice with `python -m lib.pipeline` into a fresh store under "
        f"build/bench; the first run trains every model and runs every attack, the second loads them all. Wall time of the whole stage "
        f"(notebook start to results written) on {_machine()}."
    )
    return ResultsWriter(OUT).table(f"store_{stage}_{profile}", df, caption).data


PARTS = ("attacks", "autoattack", "throughput", "store")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("parts", nargs="*", help=f"any of {', '.join(PARTS)} (default: all)")
    ap.add_argument("--profile", default="cpu", help="throughput and store: the profile (default cpu)")
    ap.add_argument(
        "--stage",
        default="p5_mnist_gan",
        choices=stages.names(),
        help="store: the stage run twice (default p5_mnist_gan)",
    )
    args = ap.parse_args(argv)
    if unknown := set(args.parts) - set(PARTS):
        ap.error(f"unknown part(s) {', '.join(sorted(unknown))}; parts: {', '.join(PARTS)}")
    for part in args.parts or PARTS:
        df = {
            "attacks": attacks,
            "autoattack": autoattack,
            "throughput": lambda: throughput(args.profile),
            "store": lambda: store_speedup(args.stage, args.profile),
        }[part]()
        print(f"\n{part}:\n{df.to_string(index=False)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
