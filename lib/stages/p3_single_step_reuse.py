"""p3 — Liu, Khalil, Khreishah: single-step adversarial training that reuses last epoch's perturbation.

Defences (one architecture, one set of hyper-parameters, as in the paper):
vanilla, fgsm_adv, atda (Song et al. 2019), proposed, bim10_adv, bim30_adv. Adversarially
trained models see a clean + adversarial mixture (``clean_weight`` of the loss on clean data).
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import NotRequired, TypedDict

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch

import lib.data as D
import lib.models as M
import lib.plan as P
import lib.units as U
from lib import attack_settings as S
from lib import attacks as A
from lib import claims as C
from lib import intervals as I
from lib.cache import cached
from lib.errors import require
from lib.evaluate import accuracy_per_iteration, correct, relative_cost, robust_accuracy, robust_correct
from lib.methods.single_step_reuse import ATDASource, StoredPerturbation
from lib.report import ERROR_BARS, accuracy_curve, comparison, evaluation, legend_outside, widen
from lib.runtime import device, seed_everything
from lib.stages import Result
from lib.timing import interleaved, per_batch
from lib.train import (
    AttackSource,
    Clean,
    TrainConfig,
    TrainResult,
    Validation,
    train,
    validation_hook,
)

DEFENCES = ["vanilla", "fgsm_adv", "atda", "proposed", "bim10_adv", "bim30_adv"]
LABELS = {
    "vanilla": "Vanilla",
    "fgsm_adv": "FGSM-Adv",
    "atda": "ATDA",
    "proposed": "Proposed",
    "bim10_adv": "BIM(10)-Adv",
    "bim30_adv": "BIM(30)-Adv",
}
PAPER_EPS = {"mnist": 0.3, "fashion_mnist": 0.2}
# Table I of the paper (accuracy %, sec/epoch on a Tesla K20m); Vanilla is not in Table I.
PAPER_TABLE1 = {
    "fgsm_adv": {"mnist": (99.10, 98.65, 2.16, 2.13), "fashion_mnist": (92.09, 90.05, 6.68, 6.18), "sec": 17.12},
    "atda": {"mnist": (97.80, 97.90, 86.6, 84.2), "fashion_mnist": (85.60, 80.3, 56.8, 49.1), "sec": 26.21},
    "proposed": {"mnist": (99.08, 96.71, 94.21, 94.04), "fashion_mnist": (89.19, 79.85, 70.74, 66.03), "sec": 18.68},
    "bim10_adv": {"mnist": (98.97, 96.74, 93.29, 93.24), "fashion_mnist": (88.59, 74.93, 67.45, 65.96), "sec": 56.47},
    "bim30_adv": {"mnist": (99.06, 95.71, 93.39, 93.51), "fashion_mnist": (86.52, 76.98, 71.12, 70.75), "sec": 142.37},
}
COLUMNS = ("Original", "FGSM", "BIM(10)", "BIM(30)")
DATASET_LABEL = {"mnist": "MNIST", "mnist5k": "MNIST", "fashion_mnist": "F-MNIST"}


@dataclass
class Config:
    """Parameters of the p3 stage (see profiles/<stage>.yaml; defaults = the paper's setting where it has one)."""

    profile: str = "smoke"
    datasets: dict[str, float] = field(default_factory=lambda: {"mnist": 0.3, "fashion_mnist": 0.2})  # name -> L∞ eps
    n_train: int | None = None
    n_test: int | None = None
    n_val: int = 5000  # validation examples held out of each training split (the convergence gates read them)
    model_width: int = 64
    model_hidden: int = 128
    epochs: int = 40
    batch_size: int = 64
    lr: float = 1e-3
    clean_weight: float = 0.5
    step_fraction: float = 0.1  # proposed: step = eps * step_fraction per epoch
    reset_every: int = 20  # proposed: stored perturbations reset every this many epochs
    atda_lambda_uda: float = 1 / 3
    atda_lambda_sda: float = 1 / 3
    atda_margin: float = 1.0
    atda_center_momentum: float = 0.9
    bim_iterations: list[int] = field(default_factory=lambda: list(range(1, 31)))
    pgd_steps: int = 50
    pgd_restarts: int = 1
    autoattack: str = "standard"  # AutoAttack beside BIM and PGD: "standard" or "apgd-ce+t" (its first two attacks)
    autoattack_iterations: int = 100
    defences: list[str] = field(default_factory=lambda: list(DEFENCES))
    patience: dict[str, int] = field(
        default_factory=dict
    )  # defence -> early-stopping patience on the validation split; others train all epochs
    seed: int = 0
    seeds: int = 3  # training seeds of the defences in `seeded` (the claims' intervals cover seeds and images)
    seeded: list[str] = field(default_factory=lambda: ["proposed", "atda"])  # the two sides of the gain claims
    max_batches: int | None = None  # cap batches per epoch (tests only)
    timing_rounds: int = 7  # the cost claims: interleaved rounds of the timed defences' training (lib.timing)
    timing_batches: int = 50  # batches per defence per round

    def validate(self) -> Config:
        require(int(self.timing_rounds) >= 1, f"timing_rounds must be >= 1, got {self.timing_rounds}")
        require(int(self.timing_batches) >= 1, f"timing_batches must be >= 1, got {self.timing_batches}")
        for name, eps in self.datasets.items():
            D.check_name(name)
            require(isinstance(eps, (int, float)) and 0 <= eps <= 1, f"eps for {name} must be in [0, 1], got {eps}")
        for d in self.defences:
            require(d in DEFENCES, f"unknown defence '{d}'; known: {', '.join(DEFENCES)}")
        require(self.epochs >= 1, f"epochs must be >= 1, got {self.epochs}")
        require(0 < self.step_fraction <= 1, f"step_fraction must be in (0, 1], got {self.step_fraction}")
        require(self.reset_every >= 1, f"reset_every must be >= 1, got {self.reset_every}")
        require(all(int(n) >= 1 for n in self.bim_iterations), "bim_iterations must be positive integers")
        require(self.n_train is None or self.n_train > 0, "n_train must be positive")
        require(self.n_test is None or self.n_test > 0, "n_test must be positive")
        S.check_autoattack_settings(self.autoattack, self.autoattack_iterations)
        require(int(self.n_val) >= 1, f"n_val must be >= 1, got {self.n_val}")
        require(int(self.seeds) >= 1, f"seeds must be >= 1, got {self.seeds}")
        for d in self.seeded:
            require(d in DEFENCES, f"seeded: unknown defence '{d}'; known: {', '.join(DEFENCES)}")
        for d, p in self.patience.items():
            require(
                d in DEFENCES and d != "proposed",
                f"patience: '{d}' is not a defence that may stop early (not 'proposed': it must train past a reset)",
            )
            require(int(p) >= 1, f"patience of {d} must be >= 1, got {p}")
        return self

    def train_config(self) -> TrainConfig:
        return TrainConfig(
            epochs=self.epochs, batch_size=self.batch_size, lr=self.lr, clean_weight=self.clean_weight, seed=self.seed
        )


def make_source(defence: str, eps: float, num_examples: int, shape: tuple, num_classes: int, cfg: Config) -> Clean:
    """The perturbation source that defines ``defence``."""
    if defence == "vanilla":
        return Clean()
    if defence == "fgsm_adv":
        return AttackSource(A.fgsm, eps=eps)
    if defence == "bim10_adv":
        return AttackSource(A.bim, eps=eps, steps=10)
    if defence == "bim30_adv":
        return AttackSource(A.bim, eps=eps, steps=30)
    if defence == "atda":
        return ATDASource(
            eps, num_classes, cfg.atda_lambda_uda, cfg.atda_lambda_sda, cfg.atda_margin, cfg.atda_center_momentum
        )
    if defence == "proposed":
        return StoredPerturbation(num_examples, shape, eps, eps * cfg.step_fraction, cfg.reset_every)
    raise ValueError(defence)


def load_data(name: str, cfg: Config, data_dir) -> tuple[D.Dataset, D.Split, D.Split, D.Split]:
    """The dataset and the (sub)sampled train, validation (held out of train) and test splits the run uses."""
    ds = D.load(name, data_dir)
    train_split, val_split = D.hold_out(
        D.subset(ds.train, cfg.n_train, cfg.seed, f"{ds.name} train"), cfg.n_val, cfg.seed, f"{ds.name} train"
    )
    return ds, train_split, val_split, D.subset(ds.test, cfg.n_test, cfg.seed + 1, f"{ds.name} test")


def train_defence(
    ds: D.Dataset, train_split: D.Split, val: Validation, eps: float, defence: str, cfg: Config
) -> TrainResult:
    """Train ``defence`` from the config's seed (every defence starts from the same initial weights), its
    validation accuracy after every epoch in its history."""
    seed_everything(cfg.seed)
    model = M.build(
        "mnist_cnn", ds.shape, ds.num_classes, seed=cfg.seed, width=cfg.model_width, hidden=cfg.model_hidden
    ).to(device())
    source = make_source(defence, eps, len(train_split), ds.shape, ds.num_classes, cfg)
    loader = D.loader(train_split, cfg.batch_size, shuffle=True, seed=cfg.seed, with_index=True)
    hook = validation_hook(val.x_val, val.y_val, cfg.patience.get(defence))
    return train(
        model,
        loader,
        cfg.train_config(),
        source,
        on_epoch_end=hook,
        max_batches=cfg.max_batches,
        desc=defence,
        cache_as=defence,
    )


def evaluate_defences(
    models: dict[str, TrainResult], test: D.Split, eps: float, cfg: Config
) -> dict[str, DefenceEvaluation]:
    """Per defence: clean/FGSM/BIM(10)/BIM(30)/PGD accuracy, the BIM-N curve, the BIM(10) iterates, cost."""
    x, y = D.tensors(test)
    clean_sec = models["vanilla"].sec_per_epoch if "vanilla" in models else float("nan")
    res = {}
    for name, tr in models.items():
        with evaluation(f"{name} (eps {eps:g})"):
            res[name] = _evaluate_defence(tr, x, y, eps, cfg, clean_sec)
    return res


def _evaluate_defence(
    tr: TrainResult, x: torch.Tensor, y: torch.Tensor, eps: float, cfg: Config, clean_sec: float
) -> DefenceEvaluation:
    m = tr.final
    t0 = time.perf_counter()
    curve = {int(n): robust_accuracy(m, x, y, A.bim, eps=eps, steps=int(n)) for n in cfg.bim_iterations}
    per_image = attack_correct(m, x, y, eps, cfg)
    accuracies = {k: float(v.mean()) for k, v in per_image.items()}
    curve.update({n: accuracies[f"bim{n}"] for n in (10, 30)})
    return {
        **accuracies,
        "bim_curve": {n: curve[n] for n in sorted(curve)},
        "bim10_iterates": accuracy_per_iteration(m, x, y, eps, 10, eps / 10),
        "sec_per_epoch": tr.sec_per_epoch,
        "history": tr.history,
        "cost_vs_vanilla": relative_cost(tr.sec_per_epoch, clean_sec),
        "eval_seconds": time.perf_counter() - t0,
        "correct": per_image,
    }


SEEDED_ATTACKS = ("original", "bim10", "bim30", "pgd", "autoattack")  # what the claims compare across seeds


def extra_seeds(cfg: Config) -> list[int]:
    """The training seeds of the ``seeded`` defences after the first (``cfg.seed``)."""
    return [cfg.seed + 1000 * i for i in range(1, cfg.seeds)]


def reseed(units: U.Units, name: str, eps: float, cfg: Config) -> dict[str, list[dict]]:
    """The ``seeded`` defences retrained with each extra seed (same data, other initial weights and batch
    order): per defence, per seed, its history and per-image correctness under the claims' attacks."""
    x, y = units.data[name].test
    out: dict[str, list[dict]] = {d: [] for d in seeded(cfg)}
    for s in extra_seeds(cfg):
        models = {d: units.get(unit_name(name, d, s, cfg)) for d in seeded(cfg)}
        for d, tr in models.items():
            with evaluation(f"{d} seed {s} (eps {eps:g})"):
                correct_ = attack_correct(tr.final, x, y, eps, cfg)
            out[d].append({"seed": s, "history": tr.history, "correct": correct_})
    return out


def seeded(cfg: Config) -> list[str]:
    """The defences trained with every seed (the two sides of the gain claims), those configured."""
    return [d for d in cfg.seeded if d in cfg.defences]


def time_defences(
    models: dict[str, TrainResult], ds: D.Dataset, train_split: D.Split, eps: float, cfg: Config
) -> dict[str, list[float]]:
    """Seconds per training batch of each trained defence in ``TIMED``, in ``timing_rounds`` interleaved
    rounds of ``timing_batches`` batches each (:func:`lib.timing.interleaved`): a copy of the trained model
    and a fresh source of its defence per run. Stored like a model (a re-render reports the measured run)."""
    timed = [d for d in TIMED if d in models]
    loader = D.loader(train_split, cfg.batch_size, shuffle=True, seed=cfg.seed, with_index=True)
    one_epoch = replace(cfg.train_config(), epochs=1)

    def run(d: str):
        def once() -> float:
            source = make_source(d, eps, len(train_split), ds.shape, ds.num_classes, cfg)
            result = train(
                copy.deepcopy(models[d].final), loader, one_epoch, source, max_batches=cfg.timing_batches, desc=d
            )
            return per_batch(result, min(cfg.timing_batches, len(loader)))

        return once

    def measure() -> dict:
        return {"timing": interleaved({d: run(d) for d in timed}, cfg.timing_rounds)}

    modules = {d: models[d].final for d in timed}
    return cached(TIMING, modules, measure, key=(cfg, train_split, eps), seeded=True)["timing"]


def attack_correct(m: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, cfg: Config) -> dict:
    """Per image, whether ``m`` resists each attack the claims read (0/1), clean accuracy as "original"."""
    per_image = {
        "original": correct(m, x, y),
        "fgsm": robust_correct(m, x, y, A.fgsm, eps=eps),
        "bim10": robust_correct(m, x, y, A.bim, eps=eps, steps=10),
        "bim30": robust_correct(m, x, y, A.bim, eps=eps, steps=30),
        "pgd": robust_correct(
            m, x, y, A.pgd, eps=eps, steps=cfg.pgd_steps, step_size=2.5 * eps / cfg.pgd_steps, restarts=cfg.pgd_restarts
        ),
        "autoattack": robust_correct(
            m, x, y, A.autoattack, eps=eps, norm="linf", version=cfg.autoattack, iterations=cfg.autoattack_iterations
        ),
    }
    return {k: v.numpy().astype(np.int8) for k, v in per_image.items()}


class DefenceEvaluation(TypedDict):
    """One defence on one dataset (:func:`evaluate_defences`; accuracies as fractions)."""

    original: float
    fgsm: float
    bim10: float
    bim30: float
    pgd: float
    autoattack: float
    bim_curve: dict[int, float]  # BIM-N accuracy per N (Fig. 1)
    correct: dict[str, np.ndarray]  # per image, 0/1, under each attack above (the claims' intervals)
    bim10_iterates: list[float]  # accuracy after each BIM(10) iteration (Fig. 2)
    sec_per_epoch: float
    history: list[dict]
    cost_vs_vanilla: float
    eval_seconds: float
    seeds: NotRequired[list[dict]]  # a seeded defence's extra training seeds: {seed, history, correct} each
    timing: NotRequired[list[float]]  # a timed defence's seconds per batch in the interleaved rounds (cost claims)


Measurements = dict[str, dict[str, DefenceEvaluation]]  # dataset -> defence -> its evaluation


@dataclass
class Prepared:
    """One dataset as a run reads it: the dataset, its splits, its eps and the validation hook's data."""

    ds: D.Dataset
    train: D.Split
    val_split: D.Split
    test_split: D.Split
    eps: float

    @property
    def val(self) -> Validation:
        return Validation(*D.tensors(self.val_split))

    @property
    def test(self) -> tuple:
        return D.tensors(self.test_split)


def prepare(cfg: Config, data_dir: str | Path) -> dict[str, Prepared]:
    """Every configured dataset at its eps."""
    return {name: Prepared(*load_data(name, cfg, data_dir), eps) for name, eps in cfg.datasets.items()}


TIMING = "timing runs"


def unit_name(dataset: str, defence: str, seed: int, cfg: Config) -> str:
    """A defence's unit: by dataset, and by seed after the first."""
    return f"{dataset} {defence}" if seed == cfg.seed else f"{dataset} seed {seed} {defence}"


def run(cfg: Config, data_dir: str | Path) -> Result[Measurements]:
    """The stage: per dataset (at its eps), every defence trained from the same initial weights (its units), then
    evaluated."""
    units = U.Units("p3_single_step_reuse", plan(cfg).models, cfg, lambda: prepare(cfg, data_dir))
    results, samples, sources = {}, {}, []
    for name, data in units.data.items():
        eps = data.eps
        models = {d: units.get(unit_name(name, d, cfg.seed, cfg)) for d in cfg.defences}
        evaluated = evaluate_defences(models, data.test_split, eps, cfg)
        if not results:  # the costs are read on the first dataset
            for d, seconds in units.get(TIMING).items():
                evaluated[d]["timing"] = seconds
        results[name] = evaluated
        for d, runs in reseed(units, name, eps, cfg).items():
            results[name][d]["seeds"] = runs
        sizes = {"train": len(data.train), "validation": len(data.val_split), "test": len(data.test_split)}
        samples.update({f"{name} {split}": n for split, n in sizes.items()})
        sources.append(f"{name} ({data.ds.source}, eps {eps})")
    return Result(results, "; ".join(sources), samples)


def paper_key(dataset: str) -> str:
    """The paper's dataset a (possibly reduced) dataset stands for."""
    return "mnist" if dataset.startswith("mnist") else dataset


def table1(results: dict[str, dict]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Table I, long and wide: per defence, accuracy % per dataset and attack, and sec/epoch."""
    rows = []
    for dataset, per_def in results.items():
        pk, label = paper_key(dataset), DATASET_LABEL.get(dataset, dataset)
        for defence, r in per_def.items():
            paper = PAPER_TABLE1.get(defence, {}).get(pk, (None,) * 4)
            ours = [100 * r[k] for k in ("original", "fgsm", "bim10", "bim30")]
            for col, p, o in zip(COLUMNS, paper, ours):
                rows.append({"defence": LABELS[defence], "metric": f"{label} {col}", "paper": p, "ours": o})
    first = next(iter(results.values()))
    for defence, r in first.items():
        rows.append(
            {
                "defence": LABELS[defence],
                "metric": "sec/epoch",
                "paper": PAPER_TABLE1.get(defence, {}).get("sec"),
                "ours": r["sec_per_epoch"],
            }
        )
        rel_paper = PAPER_TABLE1.get(defence, {}).get("sec")
        rows.append(
            {
                "defence": LABELS[defence],
                "metric": "sec/epoch rel. FGSM-Adv",
                "paper": rel_paper / PAPER_TABLE1["fgsm_adv"]["sec"] if rel_paper else None,
                "ours": r["sec_per_epoch"] / first["fgsm_adv"]["sec_per_epoch"] if "fgsm_adv" in first else None,
            }
        )
        rows.append(
            {
                "defence": LABELS[defence],
                "metric": "sec/epoch rel. Vanilla",
                "paper": None,
                "ours": r["cost_vs_vanilla"],
            }
        )
    long = comparison(rows, ["defence"])
    long.loc[long["metric"] == "sec/epoch", "delta"] = float("nan")  # seconds on different hardware: compare the ratios
    return long, widen(long, ["defence"])


def strongest(r: dict) -> float:
    """Accuracy under the strongest attack that is not the paper's: PGD or AutoAttack, whichever is lower."""
    return min(r["pgd"], r["autoattack"])


SINGLE_STEP = (
    "fgsm_adv",
    "atda",
    "proposed",
)  # trained on one-step perturbations; BIM(10)-Adv is the multi-step control


def masking_diagnosis(results: dict[str, dict], broken: float = 0.05, control_floor: float = 0.2) -> str:
    """Whether the single-step defences' BIM accuracy is gradient masking (the method) or our attacks being too
    strong to mean anything (our implementation): the multi-step BIM(10)-Adv is the control. One paragraph per dataset."""
    out = []
    for dataset, r in results.items():
        label = DATASET_LABEL.get(dataset, dataset)
        single = [d for d in SINGLE_STEP if d in r]
        if not single or "bim10_adv" not in r:
            out.append(f"{label}: not diagnosed (needs the single-step defences and BIM(10)-Adv).")
            continue
        listed = ", ".join(f"{LABELS[d]} {100 * r[d]['bim10']:.1f}% → {100 * r[d]['autoattack']:.1f}%" for d in single)
        control = r["bim10_adv"]["autoattack"]
        text = (
            f"{label}: under BIM(10) → AutoAttack, {listed}; the control BIM(10)-Adv {100 * r['bim10_adv']['bim10']:.1f}% → "
            f"{100 * control:.1f}%. "
        )
        control_gap = 100 * (r["bim10_adv"]["bim10"] - control)
        collapsed = all(r[d]["autoattack"] <= broken for d in single)
        if collapsed and control >= control_floor and control_gap <= C.MASKED_POINTS:
            text += (
                "The same AutoAttack leaves the multi-step-trained control well above zero and within "
                f"{C.MASKED_POINTS:g} points of its BIM(10) accuracy (not masked), so the attack can measure robustness "
                "here; the single-step defences' BIM accuracy is gradient masking of their single-step training."
            )
        elif collapsed:
            text += (
                f"The control is itself masked or weak (BIM(10) overstates AutoAttack by {control_gap:.1f} points), so "
                "this run cannot say whether the masking comes from single-step training or from how we trained; it says "
                "only that no single-step defence keeps its BIM accuracy under AutoAttack."
            )
        else:
            text += (
                "The pattern is not the clean masking signature (single-step defences at zero, the control well above): "
                "this run does not separate the method from our implementation."
            )
        out.append(text)
    return "\n\n".join(out)


def pgd_table(results: dict[str, dict], gap_points: float = C.MASKED_POINTS) -> pd.DataFrame:
    """BIM vs PGD and AutoAttack accuracy (the paper has neither); flags BIM overstating the
    stronger of the two by > ``gap_points``: a check of the BIM evaluation, not a claim (a BIM
    verdict on a flagged defence says so beside it)."""
    rows = []
    for dataset, per_def in results.items():
        for defence, r in per_def.items():
            gap = 100 * (min(r["bim10"], r["bim30"]) - strongest(r))
            rows.append(
                {
                    "dataset": DATASET_LABEL.get(dataset, dataset),
                    "defence": LABELS[defence],
                    "BIM(10) %": 100 * r["bim10"],
                    "BIM(30) %": 100 * r["bim30"],
                    "PGD %": 100 * r["pgd"],
                    "AutoAttack %": 100 * r["autoattack"],
                    "BIM - strongest (points)": gap,
                    "gradient masking suspected": bool(gap > gap_points),
                }
            )
    return pd.DataFrame(rows)


# Fig. 1's x (BIM iterations N, per-step eps/N) where Table I reports an accuracy: BIM(1) is one FGSM step.
PAPER_CURVE_POINTS = {1: COLUMNS.index("FGSM"), 10: COLUMNS.index("BIM(10)"), 30: COLUMNS.index("BIM(30)")}


def _curves(
    results: dict[str, dict], samples: dict[str, int], key: str, xlabel: str, title: str, paper: bool = False
) -> plt.Figure:
    """One panel per dataset, one curve per defence with the interval over the test images as error bars;
    ``paper``: Table I's accuracies at the matching x as open markers (the paper's own datasets only)."""
    fig, axes = plt.subplots(1, len(results), figsize=(5.2 * len(results), 3.8), squeeze=False)
    for ax, (dataset, per_def) in zip(axes[0], results.items()):
        for defence, r in per_def.items():
            series = r[key]
            xs = list(series) if isinstance(series, dict) else list(range(1, len(series) + 1))
            ys = list(series.values()) if isinstance(series, dict) else series
            line = accuracy_curve(ax, xs, ys, samples[f"{dataset} test"], marker="o", ms=3, label=LABELS[defence])
            reported = PAPER_TABLE1.get(defence, {}).get(paper_key(dataset))
            shown = [n for n in PAPER_CURVE_POINTS if n in xs]
            if paper and reported and shown:
                ax.plot(
                    shown,
                    [reported[PAPER_CURVE_POINTS[n]] for n in shown],
                    ls="none",
                    marker="D",
                    mfc="none",
                    ms=6,
                    color=line.lines[0].get_color(),
                    label=f"{LABELS[defence]}: paper (Table I)",
                )
        ax.set(xlabel=xlabel, ylabel="test accuracy (%)", title=f"{DATASET_LABEL.get(dataset, dataset)}")
    legend_outside(axes[0][-1], 8, ERROR_BARS)
    fig.suptitle(title)
    return fig


def figure1(results: dict[str, dict], samples: dict[str, int], subtitle: str) -> plt.Figure:
    """Fig. 1: accuracy vs BIM iteration count N at per-step eps/N, Table I's FGSM, BIM(10), BIM(30) beside it."""
    return _curves(
        results,
        samples,
        "bim_curve",
        "BIM iterations N (per-step eps/N)",
        f"Fig. 1 — accuracy on BIM(N) examples ({subtitle})",
        paper=True,
    )


def figure2(results: dict[str, dict], samples: dict[str, int], subtitle: str) -> plt.Figure:
    """Fig. 2: accuracy after each iteration of BIM(10) (step eps/10)."""
    return _curves(
        results,
        samples,
        "bim10_iterates",
        "BIM(10) iteration i",
        f"Fig. 2 — accuracy on intermediate BIM(10) examples ({subtitle})",
    )


PAPER_GAINS = {
    ("mnist", "bim10"): 7.61,
    ("mnist", "bim30"): 9.83,
    ("fashion_mnist", "bim10"): 13.94,
    ("fashion_mnist", "bim30"): 16.93,
}
# The Iter-Adv reference must itself be robust for "same level as Iter-Adv" to mean anything: BIM(10)-Adv
# under BIM(10) at least 80% on MNIST (issue #18); on F-MNIST (not set there) within 10 points of the paper's 67.45%.
OURS_MARGIN = 1.0  # "beats": by more than a point (the paper reports gains of 7.6-16.9 points)
REFERENCE_FLOOR = {"mnist": 80.0, "fashion_mnist": PAPER_TABLE1["bim10_adv"]["fashion_mnist"][2] - 10}


def defence_gates(dataset: str, r: dict, defences, cfg: Config) -> list[C.Gate]:
    """What a comparison of ``defences`` on ``dataset`` needs: each converged (validation accuracy),
    each within 2 points of the paper's clean accuracy (MNIST and F-MNIST are the paper's own
    datasets), and the proposed method trained past at least one reset of its perturbations."""
    pk, label = paper_key(dataset), DATASET_LABEL.get(dataset, dataset)
    gates = []
    for d in defences:
        gates.append(C.converged_history(f"{LABELS[d]} ({label})", r[d]["history"]))
        paper = PAPER_TABLE1.get(d, {}).get(pk, (None,))[0]
        gates.append(C.clean_accuracy(LABELS[d], 100 * r[d]["original"], paper, label, stand_in=paper is None))
        for run in r[d].get("seeds", []):
            seeded = f"{LABELS[d]} seed {run['seed']}"
            gates.append(C.converged_history(f"{seeded} ({label})", run["history"]))
            clean = 100 * float(run["correct"]["original"].mean())
            gates.append(C.clean_accuracy(seeded, clean, paper, label, stand_in=paper is None))
    if "proposed" in defences:
        gates.append(past_one_reset("Proposed", r["proposed"]["history"], cfg.reset_every))
    return gates


def past_one_reset(model: str, history: list, reset_every: int) -> C.Gate:
    """The method's mechanism ran: trained past one reset of its stored perturbations (compare uses it too)."""
    return C.at_least(
        f"{model}'s epochs past one reset period ({reset_every} epochs; epochs trained)", len(history), reset_every + 1
    )


def seed_rows(v: DefenceEvaluation, attack: str) -> np.ndarray:
    """A defence's per-image correctness under ``attack``, one row per training seed ((seeds, images))."""
    return np.stack([v["correct"][attack], *(run["correct"][attack] for run in v.get("seeds", []))])


def difference(r: dict, a: str, b: str, attack: str) -> I.Interval:
    """Defence ``a``'s accuracy minus ``b``'s under ``attack`` (points), paired on the same test images; over
    every training seed of both (a two-level bootstrap, :func:`lib.intervals.paired_difference`)."""
    return I.paired_difference(seed_rows(r[a], attack), seed_rows(r[b], attack))


def masked_caveat(r: dict, defences: tuple[str, ...], attack: str) -> str:
    """The caveat of a claim under a BIM attack whose compared defences it is masked on (AutoAttack more than 5 points below)."""
    if attack not in ("bim10", "bim30"):
        return ""
    return C.masked(attack.upper(), {LABELS[d]: (100 * r[d][attack], 100 * r[d]["autoattack"]) for d in defences})


def gain_spec(dataset: str, attack: str, claim: str, paper: float | None, rule: C.Rule, cfg: Config) -> C.Spec:
    """Proposed against ATDA on ``dataset`` under ``attack`` (Proposed − ATDA, points)."""
    return C.Spec(
        claim,
        quantity=lambda R: difference(R[dataset], "proposed", "atda", attack).estimate,
        rule=rule,
        gates=lambda R: defence_gates(dataset, R[dataset], ("proposed", "atda"), cfg),
        paper=paper,
        applies=lambda R: {"proposed", "atda"} <= R[dataset].keys(),
        interval=lambda R: difference(R[dataset], "proposed", "atda", attack),
        caveat=lambda R: masked_caveat(R[dataset], ("proposed", "atda"), attack),
    )


def iter_adv_spec(dataset: str, cfg: Config) -> C.Spec:
    """Proposed at the level of BIM(10)-Adv under BIM(10) (the paper's "same level as Iter-Adv")."""
    pk, label = paper_key(dataset), DATASET_LABEL.get(dataset, dataset)
    paper = (
        PAPER_TABLE1["proposed"][pk][2] - PAPER_TABLE1["bim10_adv"][pk][2] if pk in PAPER_TABLE1["proposed"] else None
    )

    def gates(R: dict) -> list[C.Gate]:
        r = R[dataset]
        reference = C.at_least(
            f"BIM(10)-Adv under BIM(10) on {label} (%)", 100 * r["bim10_adv"]["bim10"], REFERENCE_FLOOR.get(pk, 80.0)
        )
        return [*defence_gates(dataset, r, ("proposed", "bim10_adv"), cfg), reference]

    return C.Spec(
        f"{label}: Proposed at the same level as Iter-Adv (within 5 points of BIM(10)-Adv under BIM(10); gap, points)",
        quantity=lambda R: difference(R[dataset], "proposed", "bim10_adv", "bim10").estimate,
        rule=C.not_below(-5.0),
        gates=gates,
        paper=paper,
        applies=lambda R: {"proposed", "bim10_adv"} <= R[dataset].keys(),
        interval=lambda R: difference(R[dataset], "proposed", "bim10_adv", "bim10"),
        caveat=lambda R: masked_caveat(R[dataset], ("proposed", "bim10_adv"), "bim10"),
    )


def dataset_claims(dataset: str, cfg: Config) -> list[C.Spec]:
    """The claims tested on one dataset: the paper's gains over ATDA, ours under stronger attacks, and
    the Iter-Adv comparison (the masking check of the BIM evaluation is :func:`pgd_table`)."""
    pk, label = paper_key(dataset), DATASET_LABEL.get(dataset, dataset)
    ours = {"pgd": f"PGD-{cfg.pgd_steps}", "autoattack": "AutoAttack"}
    return [
        *(
            gain_spec(
                dataset,
                n,
                f"{label}: Proposed beats ATDA under {n.upper()} (by more than {OURS_MARGIN:g} point; Proposed − ATDA, points)",
                PAPER_GAINS[(pk, n)],
                C.above(OURS_MARGIN),
                cfg,
            )
            for n in ("bim10", "bim30")
        ),
        *(
            gain_spec(
                dataset,
                attack,
                f"{label}, ours: Proposed beats ATDA under {name} by more than {OURS_MARGIN:g} point (Proposed − ATDA, points)",
                None,
                C.above(OURS_MARGIN),
                cfg,
            )
            for attack, name in ours.items()
        ),
        iter_adv_spec(dataset, cfg),
    ]


TIMED = ("proposed", "atda", "fgsm_adv")


def cost_ratio(R: dict, other: str) -> I.Interval:
    """Proposed's time per training batch over ``other``'s on the first dataset, timed in the same interleaved
    rounds (:func:`time_defences`): the median of the per-round ratios, its interval by a bootstrap over the rounds."""
    return I.paired_ratio(first(R)["proposed"]["timing"], first(R)[other]["timing"])


def timed(R: dict, defences: tuple[str, ...] = TIMED) -> bool:
    """Whether the first dataset's run timed each of ``defences`` (the cost claims and metrics need them)."""
    return all("timing" in first(R).get(d, {}) for d in defences)


def cost_claim(claim: str, other: str, rule: C.Rule) -> C.Spec:
    """One of the paper's cost claims: :func:`cost_ratio` against the paper's, gated by the rounds' spread."""

    def seconds(R: dict, d: str) -> list[float]:
        return first(R)[d]["timing"]

    def ratio(R: dict) -> I.Interval:
        return cost_ratio(R, other)

    return C.Spec(
        claim,
        quantity=lambda R: ratio(R).estimate,
        rule=rule,
        gates=lambda R: C.steady(f"Proposed / {LABELS[other]}", seconds(R, "proposed"), seconds(R, other)),
        paper=round(PAPER_TABLE1["proposed"]["sec"] / PAPER_TABLE1[other]["sec"], 2),
        applies=timed,
        interval=ratio,
    )


def cost_claims() -> list[C.Spec]:
    """The paper's cost claims, on the first dataset (time per training batch, interleaved rounds in this run)."""
    return [
        cost_claim(
            "Proposed is cheaper than ATDA (time per training batch, Proposed / ATDA, interleaved; cheaper: under 0.9)",
            "atda",
            C.below(0.9),
        ),
        cost_claim(
            "Proposed costs within 10% of FGSM-Adv (time per training batch, Proposed / FGSM-Adv, interleaved)",
            "fgsm_adv",
            C.not_above(1.10),
        ),
    ]


def first(results: dict[str, dict]) -> dict:
    """The first dataset's results (the one the costs are read on)."""
    return next(iter(results.values()))


def claim_specs(cfg: Config) -> list[C.Spec]:
    """The paper's claims (and ours) as data, decided on the results of :func:`evaluate_defences` per dataset."""
    return [*(spec for dataset in cfg.datasets for spec in dataset_claims(dataset, cfg)), *cost_claims()]


def claims(results: dict[str, dict], cfg: Config) -> list[C.Claim]:
    """The claims of :func:`claim_specs`, decided on this run, each with its gates."""
    return C.evaluate(claim_specs(cfg), results)


def summary_metrics(results: dict[str, dict]) -> dict:
    """The headline numbers for metrics.json (accuracies as fractions, seconds on this machine)."""
    keep = ("original", "fgsm", "bim10", "bim30", "pgd", "autoattack", "sec_per_epoch", "cost_vs_vanilla")
    return {ds: {d: {k: r[k] for k in keep} for d, r in per.items()} for ds, per in results.items()}


def headline_metrics(results: dict[str, dict]) -> dict[str, float]:
    """metrics.json: the numbers the claims rest on (accuracy in %, cost as a ratio)."""
    out = {}
    for dataset, r in results.items():
        short = "mnist" if paper_key(dataset) == "mnist" else "fmnist"
        for defence in ("proposed", "atda", "bim10_adv"):
            if defence in r:
                out[f"{short}_bim10_acc_{defence}"] = round(100 * r[defence]["bim10"], 2)
        for defence in ("proposed", "atda"):
            if defence in r:
                out[f"{short}_pgd_acc_{defence}"] = round(100 * r[defence]["pgd"], 2)
                out[f"{short}_autoattack_acc_{defence}"] = round(100 * r[defence]["autoattack"], 2)
    for rival in ("atda", "fgsm_adv"):  # the cost claims' ratio: per training batch, interleaved rounds
        if timed(results, ("proposed", rival)):
            out[f"batch_time_proposed_over_{rival}"] = round(cost_ratio(results, rival).estimate, 3)
    return out


def plan(cfg: Config) -> P.StagePlan:
    """The stage's units under ``cfg`` (what it trains, what each builds on, how) and their cost (:mod:`lib.plan`)."""
    names = list(cfg.datasets)
    n = P.train_size(names[0], cfg.n_train, cfg.n_val)
    plan = P.StagePlan("p3_single_step_reuse", cfg.profile, n)
    both = 1 + (cfg.clean_weight > 0)  # adversarial (+ clean) forward-backward
    passes = {
        "vanilla": 1,
        "fgsm_adv": 1 + both,
        "atda": 1 + both,
        "proposed": 1 + both,
        "bim10_adv": 10 + both,
        "bim30_adv": 30 + both,
    }

    def defence(name: str, d: str, seed: int):
        def fit(units: U.Units) -> TrainResult:
            data = units.data[name]
            return train_defence(data.ds, data.train, data.val, data.eps, d, replace(cfg, seed=seed))

        return fit

    def timing(name: str):
        def fit(units: U.Units) -> dict[str, list[float]]:
            data = units.data[name]
            models = {d: units.get(unit_name(name, d, cfg.seed, cfg)) for d in TIMED if d in cfg.defences}
            return time_defences(models, data.ds, data.train, data.eps, cfg)

        return fit

    for name in names:
        model = P.Model(
            "mnist_cnn",
            P.shape_of(name),
            P.classes_of(name),
            (("width", cfg.model_width), ("hidden", cfg.model_hidden)),
        )
        n = P.train_size(name, cfg.n_train, cfg.n_val)
        for seed in [cfg.seed, *extra_seeds(cfg)]:
            for d in cfg.defences if seed == cfg.seed else seeded(cfg):
                unit = unit_name(name, d, seed, cfg)
                plan.add(unit, model, cfg.epochs, n, passes[d], cfg.batch_size, defence(name, d, seed))
        if name == names[0]:  # the cost claims' interleaved rounds, on the first dataset: a warm-up + the rounds
            timed = [d for d in TIMED if d in cfg.defences]
            examples = len(timed) * (1 + cfg.timing_rounds) * cfg.timing_batches * cfg.batch_size
            deps = tuple(unit_name(name, d, cfg.seed, cfg) for d in timed)
            plan.add(TIMING, model, 1, examples, 1 + both, cfg.batch_size, timing(name), deps, exclusive=True)
    return plan
