"""compare — the five papers' defences and three references under ONE threat model, at one cost scale.

Every defence trains the same architecture on the same data for the same epoch budget (early stopping
on a held-out validation split where the profile sets a patience); each has one
strength knob (eps, box size s, or c_L) swept so that its benign accuracy comes closest to a common
target. All are then attacked alike: PGD-L∞ and PGD-L2 with random restarts (and a run with twice
the steps to show convergence), C&W-L2 rho, a black-box transfer attack from an independently
trained network, and foolbox's PGD on a subset as an independent cross-check. Gradient-masking
sanity checks are reported as pass/fail. The sources are the paper modules' own classes.
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
import torch.nn as nn
from matplotlib.ticker import FixedLocator, FormatStrFormatter, NullFormatter

import lib.data as D
import lib.models as M
import lib.plan as P
import lib.units as U
from lib import attack_settings as S
from lib import attacks as A
from lib import claims as C
from lib import intervals as I
from lib.crosscheck import foolbox_attack
from lib.errors import require
from lib.evaluate import (
    accuracy,
    adversarial_examples,
    closest_benign,
    correct,
    mean_perturbation,
    minimal_norms,
    relative_cost,
    rho_stats,
)
from lib.methods import conv_generator_ensemble as p1
from lib.methods import mnist_gan as p5
from lib.methods import pgn as p2
from lib.methods import resnet_transfer_augmentation as p4
from lib.methods import single_step_reuse as p3
from lib.report import ERROR_BARS, accuracy_curve, evaluation, legend_outside
from lib.runtime import device, seed_everything
from lib.stages import Result
from lib.stages.p2_pgn import perturbation_ratio, reference_decay, reference_flip_shift
from lib.stages.p3_single_step_reuse import past_one_reset
from lib.train import (
    LR_SCHEDULES,
    AttackSource,
    Clean,
    TrainConfig,
    TrainResult,
    Validation,
    train,
    validation_hook,
)

# defence -> (label, paper, what its strength knob is)
DEFENCES = {
    "clean": ("Clean training", "reference", None),
    "fgsm_at": ("FGSM-AT", "reference (Goodfellow et al.)", "eps (L∞)"),
    "pgd_at": ("PGD-AT, 10 steps", "reference (Madry et al.)", "eps (L∞)"),
    "p1_generator_ensemble": ("p1 conv-generator ensemble", "Jung", "box s (L∞)"),
    "p2_pgn": ("p2 PGN", "PGN (ICLR-2020 submission)", "c_L (L2 penalty)"),
    "p2_pgn_reference": ("p2 PGN, reference-faithful", "PGN as its public code (ATPGN) trains it", "c_L (L2 penalty)"),
    "p3_single_step_reuse": ("p3 single-step reuse", "Liu, Khalil, Khreishah", "eps (L∞)"),
    "p4_transfer_augmentation": ("p4 transfer augmentation", "Ali, Raza, Gan", "eps (L∞) of the FGSM set"),
    "p5_alternating_gan": ("p5 alternating GAN", "Xia & Liu", "eps (L∞ bound of G)"),
}


@dataclass
class Config:
    """Parameters of the compare stage (see profiles/<stage>.yaml)."""

    profile: str = "smoke"
    dataset: str = "cifar10"
    n_train: int | None = None
    n_test: int | None = 1000  # the attacks' test images: a seeded subset of the clean-accuracy images
    n_clean_test: int | None = (
        None  # test images every clean accuracy reads (the target, the 85% floor, the 3-point match; None: all)
    )
    n_val: int = 5000  # validation images held out of the training split (the convergence gates read them)
    n_rho: int = 500  # C&W
    n_foolbox: int = 500  # foolbox cross-check subset
    model: str = "resnet20"
    model_options: dict[str, float] = field(default_factory=dict)
    epochs: int = 30  # the most epochs; early stopping may end a model sooner (patience)
    patience: int | None = (
        None  # epochs without a better validation accuracy before stopping; None: always train `epochs`
    )
    batch_size: int = 128
    lr: float = 1e-3
    lr_schedule: str = "cosine"  # constant | cosine (Adam's lr annealed to 0 over `epochs`: the last epochs settle)
    strengths: dict[str, list[float | None]] = field(
        default_factory=lambda: {
            "clean": [None],
            "fgsm_at": [4 / 255, 8 / 255],
            "pgd_at": [4 / 255, 8 / 255],
            "p1_generator_ensemble": [0.03, 0.06],
            "p2_pgn": [0.005, 0.016],
            "p2_pgn_reference": [0.005, 0.016],
            "p3_single_step_reuse": [4 / 255, 8 / 255],
            "p4_transfer_augmentation": [0.01, 0.03],
            "p5_alternating_gan": [4 / 255, 8 / 255],
        }
    )
    clean_weight: dict[str, float] = field(
        default_factory=lambda: {"fgsm_at": 0.5, "p3_single_step_reuse": 0.5, "p5_alternating_gan": 0.5}
    )
    target_benign: float | None = None  # None: the clean model's accuracy minus target_drop
    target_drop: float = 0.05
    eps_linf: float = 8 / 255
    eps_l2: float = 0.5
    autoattack: str = (
        "standard"  # the headline evaluation: "standard" (RobustBench's) or "apgd-ce+t" (its first two attacks)
    )
    autoattack_iterations: int = 100  # per APGD run (the reference's 100; fewer only in the smoke profile)
    autoattack_targets: int = (
        9  # APGD-T's (and FAB-T's) target classes: the reference's 9; fewer is a labelled reduction
    )
    pgd_steps: int = 20
    pgd_restarts: int = 2
    eps_grid: list[float] = field(
        default_factory=lambda: [0.0, 2 / 255, 4 / 255, 8 / 255, 16 / 255, 32 / 255, 64 / 255]
    )
    near_zero: float = 0.05  # accuracy at the largest grid eps must be below this
    cw_steps: int = 100
    cw_binary_steps: int = 5
    cw_initial_const: float = 0.1
    k: int = 32  # p1: generators
    gen_width: int = 16  # p1 and p2 generators' width
    gen_dense: int = 1024  # p2 generator's dense layer
    gen_lr: float = 0.005  # p1 generators (SGD, momentum 0.9, the paper's lr)
    p5_width: int = 8
    step_fraction: float = 0.1  # p3
    reset_every: int = 20  # p3
    seed: int = 0
    seeds: int = (
        3  # training seeds of each defence in a claim (FGSM-AT and the papers'): its interval covers seeds and images
    )
    max_batches: int | None = None  # tests only

    def validate(self) -> Config:
        D.check_name(self.dataset)
        require(self.model in M.BUILDERS, f"unknown model '{self.model}'; known: {', '.join(sorted(M.BUILDERS))}")
        unknown = set(self.strengths) - set(DEFENCES)
        require(not unknown, f"unknown defences {sorted(unknown)}; known: {', '.join(DEFENCES)}")
        require("clean" in self.strengths, "the clean model is needed (the cost unit and the black-box reference)")
        for d, values in self.strengths.items():
            require(len(values) >= 1, f"strengths of {d} must not be empty")
            require(all(v is None or v >= 0 for v in values), f"strengths of {d} must be >= 0, got {values}")
        for name in (
            "epochs",
            "batch_size",
            "pgd_steps",
            "pgd_restarts",
            "cw_steps",
            "cw_binary_steps",
            "n_rho",
            "n_foolbox",
            "k",
            "gen_width",
            "gen_dense",
            "p5_width",
        ):
            require(int(getattr(self, name)) >= 1, f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("lr", "eps_linf", "eps_l2", "gen_lr", "cw_initial_const"):
            require(getattr(self, name) > 0, f"{name} must be > 0, got {getattr(self, name)}")
        require(
            all(e >= 0 for e in self.eps_grid) and len(self.eps_grid) >= 2, "eps_grid needs two or more values >= 0"
        )
        S.check_autoattack_settings(self.autoattack, self.autoattack_iterations, targets=self.autoattack_targets)
        require(self.target_benign is None or 0 < self.target_benign <= 1, "target_benign must be in (0, 1] or null")
        require(all(0 <= w < 1 for w in self.clean_weight.values()), "clean_weight values must be in [0, 1)")
        require(self.n_test is None or self.n_test > 0, "n_test must be positive")
        require(
            self.n_clean_test is None or (self.n_test is not None and self.n_test <= self.n_clean_test),
            f"n_clean_test ({self.n_clean_test}) must be null or at least n_test ({self.n_test}): the attacks run on a subset of its images",
        )
        require(int(self.n_val) >= 1, f"n_val must be >= 1, got {self.n_val}")
        require(int(self.seeds) >= 1, f"seeds must be >= 1, got {self.seeds}")
        require(self.patience is None or int(self.patience) >= 1, f"patience must be >= 1 or null, got {self.patience}")
        require(self.lr_schedule in LR_SCHEDULES, f"lr_schedule must be one of {', '.join(LR_SCHEDULES)}")
        require(
            self.n_test is None or max(self.n_rho, self.n_foolbox) <= self.n_test,
            f"n_rho {self.n_rho} and n_foolbox {self.n_foolbox} must not exceed n_test {self.n_test}",
        )
        return self

    @property
    def cw(self) -> dict:
        return {"steps": self.cw_steps, "binary_steps": self.cw_binary_steps, "initial_const": self.cw_initial_const}


def build_model(ds: D.Dataset, cfg: Config, seed: int) -> nn.Module:
    """The common architecture."""
    return M.build(cfg.model, ds.shape, ds.num_classes, seed=seed, **cfg.model_options).to(device())


def make_source(defence: str, value, ds: D.Dataset, train_split: D.Split, cfg: Config) -> Clean:
    """The training source of ``defence`` at strength ``value``, built from its paper module's classes."""
    return _new_source(defence, value, ds, train_split, cfg)


def _new_source(defence: str, value, ds: D.Dataset, train_split: D.Split, cfg: Config) -> Clean:
    shape, k = ds.shape, ds.num_classes
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed + 7)
        if defence == "fgsm_at":
            return AttackSource(A.fgsm, eps=value)
        if defence == "pgd_at":
            return AttackSource(A.pgd, eps=value, steps=10, norm="linf")
        if defence == "p1_generator_ensemble":
            ensemble = p1.GeneratorEnsemble(shape[0], cfg.k, value, 3, cfg.gen_width, "split").to(device())
            return p1.EnsembleSource(ensemble, cfg.gen_lr, 0.9)
        if defence == "p2_pgn":
            return p2.PGNSource(
                p2.PGNGenerator(shape, k, cfg.gen_width, cfg.gen_dense).to(device()), c_l=value, lr=cfg.lr
            )
        if defence == "p2_pgn_reference":  # its generator (leaky, He init), one Adam, the average of both networks
            return p2.PGNSource(
                p2.PGNGenerator(shape, k, cfg.gen_width, cfg.gen_dense, leaky=True).to(device()),
                c_l=value,
                lr=cfg.lr,
                shared=True,
                ema_decay=reference_ema(train_split, cfg),
            )
        if defence == "p3_single_step_reuse":
            return p3.StoredPerturbation(len(train_split), shape, value, value * cfg.step_fraction, cfg.reset_every)
        if defence == "p5_alternating_gan":
            g = p5.PerturbationGenerator(shape, value, cfg.p5_width).to(device())
            return p5.AlternatingGenerator(g, p5.generator_optimizer(g, "adam", cfg.lr))
    return Clean()


@dataclass
class Trained:
    defence: str
    value: float | None
    result: TrainResult
    benign: float
    source: Clean | None = None  # its training source (a generator there holds the trained weights)

    @property
    def model(self) -> nn.Module:
        return self.result.final

    @property
    def setting(self) -> str:
        knob = DEFENCES[self.defence][2]
        return "—" if self.value is None else f"{knob.split(' ')[0]} {self.value:.4g}"


def reference_ema(train_split: D.Split, cfg: Config) -> float:
    """The reference-faithful PGN's moving-average decay: ATPGN's 0.998 a step, scaled to this run's steps
    per epoch (the same half-life in epochs; p2's :func:`~lib.stages.p2_pgn.reference_decay`)."""
    return reference_decay(math.ceil(len(train_split) / cfg.batch_size))


def reference_training(defence: str, train_split: D.Split, cfg: Config) -> dict:
    """What the reference-faithful PGN changes in the classifier's training: the moving average of its weights
    and ATPGN's random flip + shift of every batch (none for the other defences). The classifier stays the
    common architecture, so the reference's leaky ReLU and He init do not apply here."""
    if defence != "p2_pgn_reference":
        return {}
    return {"ema_decay": reference_ema(train_split, cfg), "augment": reference_flip_shift()}


def fit(
    defence: str,
    value,
    ds: D.Dataset,
    train_split: D.Split,
    val: Validation,
    clean_test: tuple,
    cfg: Config,
    source_model: nn.Module | None = None,
    seed: int | None = None,
) -> Trained:
    """Train one defence at one strength on the common architecture, data and epoch budget (its
    validation accuracy per epoch in the history; early stopping on it when ``cfg.patience`` is set);
    its benign accuracy is read on ``clean_test``."""
    seed = cfg.seed if seed is None else seed
    split = train_split
    if defence == "p4_transfer_augmentation":
        split = p4.adversarial_training_set(source_model, train_split, [value], cfg.seed, "the clean model")
    model = build_model(ds, cfg, seed)
    tc = TrainConfig(
        epochs=cfg.epochs,
        batch_size=cfg.batch_size,
        lr=cfg.lr,
        clean_weight=cfg.clean_weight.get(defence, 0.0),
        seed=seed,
        lr_schedule=cfg.lr_schedule,
        **reference_training(defence, split, cfg),
    )
    loader = D.loader(split, cfg.batch_size, shuffle=True, seed=seed, with_index=True)
    desc = f"{DEFENCES[defence][0]} {'' if value is None else f'{value:.4g}'}"
    hook = validation_hook(val.x_val, val.y_val, cfg.patience)
    source = make_source(defence, value, ds, split, cfg)
    result = train(
        model,
        loader,
        tc,
        source,
        on_epoch_end=hook,
        max_batches=cfg.max_batches,
        desc=desc,
        cache_as=unit_name(defence, value, seed),
    )
    return Trained(defence, value, result, accuracy(result.final, *clean_test), source)


def training_perturbation_l2(chosen: dict, test: tuple) -> dict[str, float]:
    """Mean L2 of the perturbations PGN's trained generator and FGSM-AT's attack put on the test images,
    each against its own trained classifier (PGN's mechanism gate: within 2x of the baseline's)."""
    x, y = test
    pgn, fgsm = chosen["p2_pgn"], chosen["fgsm_at"]
    generator = pgn.source.generator.eval()
    x_pgn = adversarial_examples(pgn.model, x, y, p2.pgn_attack, generator=generator)
    x_fgsm = adversarial_examples(fgsm.model, x, y, A.fgsm, eps=fgsm.value)
    return {"p2_pgn": mean_perturbation(x_pgn, x), "fgsm_at": mean_perturbation(x_fgsm, x)}


def pgd(model: nn.Module, x, y, norm: str, eps: float, steps: int, restarts: int) -> torch.Tensor:
    """Our PGD (random start, step 2.5·eps/steps, restarts keep the first success)."""
    return adversarial_examples(model, x, y, A.pgd, eps=eps, steps=steps, norm=norm, restarts=restarts)


def autoattack(model: nn.Module, x, y, norm: str, eps: float, cfg: Config) -> torch.Tensor:
    """AutoAttack's examples (the reference implementation, :func:`lib.attacks.autoattack`) at ``eps``."""
    return adversarial_examples(
        model,
        x,
        y,
        A.autoattack,
        eps=eps,
        norm=norm,
        version=cfg.autoattack,
        iterations=cfg.autoattack_iterations,
        targets=cfg.autoattack_targets,
    )


def autoattack_linf(model: nn.Module, x, y, cfg: Config) -> torch.Tensor:
    """AutoAttack's examples at the L∞ budget: the claims' attack."""
    return autoattack(model, x, y, "linf", cfg.eps_linf, cfg)


def evaluate(t: Trained, transfer: torch.Tensor, test: tuple, cfg: Config) -> dict:
    """Every attack of the common threat model on one trained defence (``transfer``: the black-box examples), and the sanity checks."""
    x, y = test
    model = t.model
    s, r = cfg.pgd_steps, cfg.pgd_restarts
    linf = accuracy(model, pgd(model, x, y, "linf", cfg.eps_linf, s, r), y)
    linf_2x = accuracy(model, pgd(model, x, y, "linf", cfg.eps_linf, 2 * s, r), y)
    l2 = accuracy(model, pgd(model, x, y, "l2", cfg.eps_l2, s, r), y)
    curve = [
        accuracy(model, x, y) if e == 0 else accuracy(model, pgd(model, x, y, "linf", e, s, 1), y) for e in cfg.eps_grid
    ]  # all on the attacks' images
    xf, yf = x[: cfg.n_foolbox], y[: cfg.n_foolbox]
    step = 2.5 * cfg.eps_linf / s
    ours_subset = accuracy(model, pgd(model, xf, yf, "linf", cfg.eps_linf, s, 1), yf)
    fb = accuracy(
        model,
        foolbox_attack(
            model, xf.to(device()), yf.to(device()), "pgd_linf", eps=cfg.eps_linf, steps=s, step_size=step
        ).cpu(),
        yf,
    )
    cw = rho_stats(minimal_norms(model, x[: cfg.n_rho], y[: cfg.n_rho], A.cw_l2, **cfg.cw))
    aa = {
        "linf": accuracy(model, autoattack_linf(model, x, y, cfg), y),
        "l2": accuracy(model, autoattack(model, x, y, "l2", cfg.eps_l2, cfg), y),
    }
    black_box = accuracy(model, transfer, y)
    return {
        "clean": t.benign,
        "autoattack_linf": aa["linf"],
        "autoattack_l2": aa["l2"],
        "pgd_linf": linf,
        "pgd_linf_2x_steps": linf_2x,
        "pgd_l2": l2,
        "rho_cw": cw["mean_l2"],
        "cw_success": cw["success_rate"],
        "black_box_linf": black_box,
        "foolbox_pgd_linf_subset": fb,
        "ours_pgd_linf_subset": ours_subset,
        "eps_curve": dict(zip(cfg.eps_grid, curve)),
        **sanity_checks(curve, cfg.near_zero, linf, linf_2x, l2, aa, black_box, ours_subset, fb),
    }


ROUNDING = (
    1e-6  # accuracies are counts over n images (float32 means, off by up to ~1e-7); rounding must not decide a check
)


def _at_most(a: float, b: float) -> bool:
    """``a <= b`` up to float rounding (in float32, 0.3925 - 0.3825 is 0.0100000202...)."""
    return a <= b + ROUNDING


def sanity_checks(
    curve: list,
    near_zero: float,
    linf: float,
    linf_2x: float,
    l2: float,
    aa: dict,
    black_box: float,
    ours_subset: float,
    foolbox: float,
) -> dict:
    """The evaluation's sanity checks on one defence (accuracies as fractions; ``aa``: AutoAttack's per norm)."""
    return {
        "check_monotone_to_zero": all(_at_most(b, a + 0.01) for a, b in zip(curve, curve[1:]))
        and curve[-1] < near_zero,
        "check_black_box_not_below_white_box": _at_most(linf - 0.01, black_box),
        "check_more_steps_never_raise": _at_most(linf_2x, linf + 0.005),  # random starts differ: half a point of slack
        "check_steps_converged": abs(linf_2x - linf) < 0.01 - ROUNDING,
        "check_foolbox_not_stronger": _at_most(ours_subset, foolbox + 0.01),
        "check_autoattack_within_1pt_of_pgd": _at_most(abs(aa["linf"] - linf), 0.01)
        and _at_most(abs(aa["l2"] - l2), 0.01),
    }


class Measurements(TypedDict):
    """What :func:`run` measures (accuracies as fractions)."""

    chosen: dict[str, Trained]  # per defence, the strength nearest the benign target
    swept: dict[str, dict]  # per defence, every strength trained
    results: dict[str, dict]  # per chosen defence, its evaluation (:func:`evaluate`)
    target: float  # the benign-accuracy target
    perturbation_l2: dict[str, float]  # PGN's and FGSM-AT's mean L2 training perturbation (p2's gate)
    dataset: D.Dataset
    n_train: int
    n_val: int
    n_test: int
    n_clean_test: int
    surrogate_accuracy: float  # the black-box source's clean accuracy
    reseeded: dict[str, list[Trained]]  # per claimed defence, its models of the seeds after the first
    correct: dict[str, np.ndarray]  # per claimed defence, AutoAttack L∞ correctness (seeds, images)


def run(cfg: Config, data_dir: str | Path) -> Result[Measurements]:
    """The stage: every defence trained (its units) and evaluated alike (:func:`measure`)."""
    seed_everything(cfg.seed)
    r = measure(U.Units("compare", plan(cfg).models, cfg, lambda: prepare(cfg, data_dir)))
    samples = {
        "train": r["n_train"],
        "validation": r["n_val"],
        "test (attacks)": r["n_test"],
        "test (clean accuracy)": r["n_clean_test"],
        "C&W": cfg.n_rho,
        "foolbox": cfg.n_foolbox,
    }
    return Result(r, f"{cfg.dataset} ({r['dataset'].source})", samples)


@dataclass
class Prepared:
    """The data a run reads: the dataset, training and validation splits, the clean-accuracy and attack test sets."""

    ds: D.Dataset
    train: D.Split
    val_split: D.Split
    val: Validation
    clean_test: tuple
    test: tuple


def prepare(cfg: Config, data_dir: str | Path) -> Prepared:
    """The data every unit and the evaluation read."""
    ds = D.load(cfg.dataset, data_dir)
    train_split, val_split = D.hold_out(
        D.subset(ds.train, cfg.n_train, cfg.seed, f"{ds.name} train"), cfg.n_val, cfg.seed, f"{ds.name} train"
    )
    clean_split = D.subset(ds.test, cfg.n_clean_test, cfg.seed + 1, f"{ds.name} test")
    test = D.tensors(
        D.subset(clean_split, cfg.n_test, cfg.seed + 2, f"the {len(clean_split)} clean-accuracy test images")
    )
    require(
        max(cfg.n_rho, cfg.n_foolbox) <= len(test[1]),
        f"n_rho {cfg.n_rho} and n_foolbox {cfg.n_foolbox} must not exceed the {len(test[1])} test images",
    )
    return Prepared(ds, train_split, val_split, Validation(*D.tensors(val_split)), D.tensors(clean_split), test)


def unit_name(defence: str, value, seed: int) -> str:
    """The unit (and store name) of ``defence`` at strength ``value`` trained with ``seed``."""
    return f"{DEFENCES[defence][0]} {'' if value is None else f'{value:.4g} '}seed {seed}"


def target_of(clean: Trained, cfg: Config) -> float:
    """The benign accuracy every defence's strength is matched to."""
    return cfg.target_benign if cfg.target_benign is not None else clean.benign - cfg.target_drop


def swept_of(units: U.Units) -> dict[str, dict]:
    """Every defence at every strength of its sweep (the first seed): defence -> strength -> the trained model."""
    cfg = units.cfg
    return {d: {v: units.get(unit_name(d, v, cfg.seed)) for v in values} for d, values in cfg.strengths.items()}


def chosen_of(units: U.Units) -> dict[str, Trained]:
    """Per defence, the strength of its sweep nearest the benign target (the clean model for "clean")."""
    target = target_of(units.get(unit_name("clean", None, units.cfg.seed)), units.cfg)
    return {
        d: runs[closest_benign({v: t.benign for v, t in runs.items()}, target)[0]]
        for d, runs in swept_of(units).items()
    }


def measure(units: U.Units) -> Measurements:
    """Every defence's strength sweep (its units), the strength nearest the benign target, all evaluated alike."""
    cfg, data = units.cfg, units.data
    test, clean_test = data.test, data.clean_test
    clean = units.get(unit_name("clean", None, cfg.seed))
    target = target_of(clean, cfg)
    swept, chosen = swept_of(units), chosen_of(units)
    surrogate = units.get(unit_name("clean", None, cfg.seed + 100)).model
    transfer = pgd(surrogate, *test, "linf", cfg.eps_linf, cfg.pgd_steps, cfg.pgd_restarts)
    perturbation_l2 = training_perturbation_l2(chosen, test) if {"p2_pgn", "fgsm_at"} <= set(chosen) else {}
    results = {}
    for d, t in chosen.items():
        with evaluation(f"{d} (PGD-L∞, PGD-L2, C&W, black-box, foolbox)"):
            results[d] = evaluate(t, transfer, test, cfg)
    reseeded = {d: [units.get(reseeded_unit(d, s)) for s in extra_seeds(cfg)] for d in claimed(chosen)}
    return {
        "chosen": chosen,
        "swept": swept,
        "results": results,
        "target": target,
        "perturbation_l2": perturbation_l2,
        "dataset": data.ds,
        "n_train": len(data.train),
        "n_val": len(data.val_split),
        "n_test": len(test[1]),
        "n_clean_test": len(clean_test[1]),
        "surrogate_accuracy": accuracy(surrogate, *clean_test),
        "reseeded": reseeded,
        "correct": {d: autoattack_correct([chosen[d], *reseeded[d]], test, cfg) for d in reseeded},
    }


def reseeded_unit(defence: str, seed: int) -> str:
    """The unit of a claimed defence at its chosen strength (matched when the run knows it) with another seed."""
    return f"{DEFENCES[defence][0]} at the matched strength seed {seed}"


def claimed(defences) -> list[str]:
    """The defences of the claims (FGSM-AT and the papers'), those trained in this run."""
    return [d for d in ("fgsm_at", *PAPER_DEFENCES) if d in defences]


def extra_seeds(cfg: Config) -> list[int]:
    """The training seeds of a claimed defence after the first (``cfg.seed``)."""
    return [cfg.seed + 1000 * i for i in range(1, cfg.seeds)]


def autoattack_correct(models: list[Trained], test: tuple, cfg: Config) -> np.ndarray:
    """Per seed and image, whether the model resists AutoAttack L∞ ((seeds, images), 0/1): the
    claims' paired intervals resample it."""
    x, y = test
    rows = [correct(t.model, autoattack_linf(t.model, x, y, cfg), y).numpy() for t in models]
    return np.stack(rows).astype(np.int8)


def _points(fraction_gap: float) -> float:
    """A gap between two accuracies in percentage points, rounded so float noise does not print as -1.19e-06."""
    return round(100 * fraction_gap, 2)


CHECKS = {
    "check_monotone_to_zero": "acc falls with eps, ~0 at the largest",
    "check_black_box_not_below_white_box": "black-box >= white-box",
    "check_more_steps_never_raise": "2x steps never raise acc (0.5 pt slack)",
    "check_steps_converged": "2x steps change < 1 pt",
    "check_foolbox_not_stronger": "foolbox PGD not stronger",
    "check_autoattack_within_1pt_of_pgd": "AutoAttack within 1 pt of our PGD",
}


def robust_column(cfg: Config) -> str:
    """The leaderboard's headline column: AutoAttack at the L∞ budget (%)."""
    return f"AutoAttack L∞ {cfg.eps_linf:.4g} (%)"


def leaderboard_plot(r: dict) -> pd.DataFrame:
    """The leaderboard's ranking as DVC's plot data: defence, clean and AutoAttack accuracy (%)."""
    return pd.DataFrame(
        [
            {
                "defence": DEFENCES[d][0],
                "clean (%)": 100 * r["results"][d]["clean"],
                "AutoAttack L∞ (%)": 100 * r["results"][d]["autoattack_linf"],
                "AutoAttack L2 (%)": 100 * r["results"][d]["autoattack_l2"],
            }
            for d in r["chosen"]
        ]
    )


def leaderboard(r: dict, cfg: Config) -> pd.DataFrame:
    """One row per defence, RobustBench's columns first (defence, paper, setting, clean and AutoAttack accuracy in
    %, cost relative to clean training, AutoAttack's test images), then our PGD beside AutoAttack, rho_cw, black-box and foolbox (the checks
    of our attack are :func:`attack_checks`)."""
    clean_sec = r["chosen"]["clean"].result.sec_per_epoch
    rows = []
    for d, t in r["chosen"].items():
        res = r["results"][d]
        rows.append(
            {
                "defence": DEFENCES[d][0],
                "paper": DEFENCES[d][1],
                "setting": t.setting,
                "clean (%)": 100 * res["clean"],
                robust_column(cfg): 100 * res["autoattack_linf"],
                f"AutoAttack L2 {cfg.eps_l2:g} (%)": 100 * res["autoattack_l2"],
                "cost (× clean epoch)": relative_cost(t.result.sec_per_epoch, clean_sec),
                "images (AutoAttack)": r["n_test"],
                "benign gap to target (pt)": _points(t.benign - r["target"]) if d != "clean" else float("nan"),
                f"PGD-L∞ {cfg.eps_linf:.4g} (%)": 100 * res["pgd_linf"],
                "AutoAttack − PGD L∞ (pt)": _points(res["autoattack_linf"] - res["pgd_linf"]),
                "PGD-L∞ 2x steps (%)": 100 * res["pgd_linf_2x_steps"],
                f"PGD-L2 {cfg.eps_l2:g} (%)": 100 * res["pgd_l2"],
                "AutoAttack − PGD L2 (pt)": _points(res["autoattack_l2"] - res["pgd_l2"]),
                "rho_cw": res["rho_cw"],
                "black-box PGD-L∞ (%)": 100 * res["black_box_linf"],
                f"ours PGD-L∞, first {cfg.n_foolbox} (%)": 100 * res["ours_pgd_linf_subset"],
                f"foolbox PGD-L∞, first {cfg.n_foolbox} (%)": 100 * res["foolbox_pgd_linf_subset"],
            }
        )
    return pd.DataFrame(rows).sort_values(robust_column(cfg), ascending=False, kind="stable").reset_index(drop=True)


def sweep_table(r: dict) -> pd.DataFrame:
    """Every trained strength: benign accuracy and whether it was picked."""
    return pd.DataFrame(
        [
            {
                "defence": DEFENCES[d][0],
                "knob": DEFENCES[d][2] or "—",
                "value": t.value,
                "benign (%)": 100 * t.benign,
                "gap to target (pt)": _points(t.benign - r["target"]),
                "sec/epoch": t.result.sec_per_epoch,
                "picked": t is r["chosen"][d],
            }
            for d, runs in r["swept"].items()
            for t in runs.values()
        ]
    )


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points not dominated (no other point is at most as costly AND at least as robust, one strictly)."""
    front = []
    for i, (c, a) in enumerate(points):
        dominated = any((c2 <= c and a2 >= a) and (c2 < c or a2 > a) for j, (c2, a2) in enumerate(points) if j != i)
        if not dominated and not (math.isnan(c) or math.isnan(a)):
            front.append(i)
    return sorted(front, key=lambda i: points[i][0])


def pareto_figure(board: pd.DataFrame, cfg: Config, subtitle: str) -> plt.Figure:
    """Robust accuracy (AutoAttack L∞) vs training cost, one point per defence, the Pareto front drawn."""
    robust = robust_column(cfg)
    pts = list(zip(board["cost (× clean epoch)"], board[robust]))
    fig, ax = plt.subplots(figsize=(7, 4.6))
    for (c, a), name, n in zip(pts, board["defence"], board["images (AutoAttack)"]):
        accuracy_curve(ax, [c], [a / 100], n, marker="o", ms=6)
        ax.annotate(name, (c, a), fontsize=7, xytext=(4, 3), textcoords="offset points")
    front = pareto_front(pts)
    ax.plot([pts[i][0] for i in front], [pts[i][1] for i in front], color="0.3", ls="--", lw=1, label="Pareto front")
    ax.set_xscale("log")
    costs = [c for c, _ in pts if not math.isnan(c)]
    ticks = [t for t in (1, 1.5, 2, 3, 4, 5, 7, 10, 15, 20, 30) if min(costs) / 1.2 <= t <= max(costs) * 1.2]
    ax.xaxis.set_major_locator(FixedLocator(ticks))  # plain numbers, not 2×10⁰
    ax.xaxis.set_major_formatter(FormatStrFormatter("%gx"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set(
        xlabel="training cost (sec/epoch relative to clean training, same run; log)",
        ylabel=f"accuracy under AutoAttack ({cfg.autoattack}) L∞ eps {cfg.eps_linf:.4g} (%)",
        title=f"compare — robustness vs cost ({subtitle})",
    )
    legend_outside(ax, 7, ERROR_BARS)
    return fig


def eps_curves_figure(r: dict, cfg: Config, subtitle: str) -> plt.Figure:
    """Accuracy vs PGD-L∞ eps per defence (the monotonicity sanity check), on the attacks' test images."""
    fig, ax = plt.subplots(figsize=(7, 4.4))
    for d, res in r["results"].items():
        curve = res["eps_curve"]
        accuracy_curve(ax, curve, curve.values(), r["n_test"], marker="o", ms=3, label=DEFENCES[d][0])
    ax.set(xlabel="PGD-L∞ eps", ylabel="accuracy (%)", title=f"compare — accuracy vs eps ({subtitle})")
    legend_outside(ax, 7, ERROR_BARS)
    return fig


def summary_metrics(r: dict) -> dict:
    return {
        "target_benign": r["target"],
        "surrogate_accuracy": r["surrogate_accuracy"],
        "training_perturbation_mean_l2": r.get("perturbation_l2", {}),
        "defences": {
            d: {
                "setting": r["chosen"][d].setting,
                "sec_per_epoch": r["chosen"][d].result.sec_per_epoch,
                **{k: v for k, v in res.items() if k != "eps_curve"},
                "eps_curve": {f"{e:.4g}": a for e, a in res["eps_curve"].items()},
            }
            for d, res in r["results"].items()
        },
    }


def findings(board: pd.DataFrame, checks: pd.DataFrame, cfg: Config) -> str:
    """Markdown: what the common evaluation says, in numbers (robustness = AutoAttack at the L∞ budget);
    ``checks``: :func:`attack_checks`."""
    robust = robust_column(cfg)
    top = board.iloc[0]
    pts = list(zip(board["cost (× clean epoch)"], board[robust]))
    front = [board["defence"][i] for i in pareto_front(pts)]
    fails = {
        row["defence"]: [label for label in CHECKS.values() if row[label] == "FAIL"] for _, row in checks.iterrows()
    }
    lines = [
        f"- Most robust under AutoAttack ({cfg.autoattack}) L∞ eps {cfg.eps_linf:.4g}: {top['defence']} ({top[robust]:.1f}%, "
        f"clean {top['clean (%)']:.1f}%, cost {top['cost (× clean epoch)']:.2f}x clean).",
        f"- Pareto front (AutoAttack accuracy vs cost): {', '.join(front)}.",
    ]
    lines += [f"- Checks of our attack that failed on {d}: {', '.join(f)}." for d, f in fails.items() if f]
    gaps = checks[checks[CHECKS["check_autoattack_within_1pt_of_pgd"]] == "FAIL"]
    if len(gaps):
        lines.append(
            "- Where AutoAttack and our PGD differ by more than 1 point (L∞ / L2, points): "
            + "; ".join(
                f"{row['defence']} {row['AutoAttack − PGD L∞ (pt)']:+.1f} / {row['AutoAttack − PGD L2 (pt)']:+.1f}"
                for _, row in gaps.iterrows()
            )
            + f". A negative gap means our PGD ({cfg.pgd_steps} steps x {cfg.pgd_restarts} restarts, fixed step size) stopped short of "
            "the worst case that APGD's adaptive step and targeted DLR loss reach; the leaderboard ranks by AutoAttack for that reason."
        )
    if not any(fails.values()):
        lines.append("- Every check of our attack passed on every defence.")
    return "\n".join(lines)


PAPER_DEFENCES = (
    "p1_generator_ensemble",
    "p2_pgn",
    "p3_single_step_reuse",
    "p4_transfer_augmentation",
    "p5_alternating_gan",
)
AS_ROBUST_POINTS = 1.0  # "at least as robust": not more than this below (one point: the papers report to 0.1-1 point)
MATCH_POINTS = 3.0  # a chosen defence's clean accuracy at most this far below the benign target


def defence_gates(r: dict, defence: str, cfg: Config) -> list[C.Gate]:
    """A defence in a comparison: converged; its clean accuracy at most 3 points below the benign target
    the strengths were chosen for (the clean model's accuracy minus ``target_drop``): one-sided, the
    same for every defence, because a defence that kept more clean accuracy than the target is not
    favoured in a robustness comparison (clean and robust accuracy trade off), while one that gave up
    more may have bought robustness with it; and its paper's mechanism run, as in its own stage (p3:
    past one reset period; p2: PGN's perturbations within 2x of the single-step baseline's in mean L2;
    p5: D's accuracy on G's images plateaued, p5's G-plateau gate)."""
    t = r["chosen"][defence]
    name = DEFENCES[defence][0]
    gates = [
        C.converged_history(f"{name} {t.setting}", t.result.history),
        C.at_least(
            f"{name} clean accuracy (%, the benign target {100 * r['target']:.1f} - {MATCH_POINTS:g})",
            100 * t.benign,
            round(100 * r["target"] - MATCH_POINTS, 4),
        ),
    ]
    if defence == "p3_single_step_reuse":
        gates.append(past_one_reset(name, t.result.history, cfg.reset_every))
    if defence == "p2_pgn" and r.get("perturbation_l2"):
        l2 = r["perturbation_l2"]
        ratio = l2["p2_pgn"] / l2["fgsm_at"]
        gates.append(perturbation_ratio("FGSM-AT's", ratio, f"eps {r['chosen']['fgsm_at'].value:g} L∞"))
    if defence == "p5_alternating_gan":
        gates.append(
            C.plateaued(f"{name}: D's accuracy on G's images", [100 * h["train_acc"] for h in t.result.history])
        )
    return gates


def clean_gates(r: dict) -> list[C.Gate]:
    """The clean model the target and the cost unit come from: converged and at least 85% (a stand-in dataset's floor)."""
    t = r["chosen"]["clean"]
    return [
        C.converged_history("clean model", t.result.history),
        C.clean_accuracy("clean model", 100 * t.benign, None, r["dataset"].name, stand_in=True),
    ]


def seed_gates(r: dict, defence: str) -> list[C.Gate]:
    """The models of ``defence``'s other seeds converged too (a claim never rests on an unconverged model)."""
    name = DEFENCES[defence][0]
    models = r["reseeded"].get(defence, [])
    return [C.converged_history(f"{name} {t.setting} seed #{i}", t.result.history) for i, t in enumerate(models, 2)]


def versus_fgsm_at(d: str, cfg: Config) -> C.Spec:
    """A paper's defence against the single-step baseline under AutoAttack L∞ at matched clean accuracy:
    "at least as robust" = not more than 1 point below (the interval of the difference, over seeds
    and the same test images, lies above -1)."""

    def aa(r: dict, defence: str) -> float:
        return r["results"][defence]["autoattack_linf"]

    return C.Spec(
        f"{DEFENCES[d][0]} is at least as robust as FGSM-AT under AutoAttack ({cfg.autoattack}) L∞ {cfg.eps_linf:.4g} "
        f"at matched clean accuracy (it minus FGSM-AT, points, {cfg.seeds} seeds)",
        quantity=lambda r: 100 * (r["correct"][d].mean() - r["correct"]["fgsm_at"].mean()),
        rule=C.above(-AS_ROBUST_POINTS),
        gates=lambda r: [
            *clean_gates(r),
            *defence_gates(r, "fgsm_at", cfg),
            *defence_gates(r, d, cfg),
            *seed_gates(r, "fgsm_at"),
            *seed_gates(r, d),
        ],
        shown=lambda r: f"{100 * aa(r, d):.1f} vs {100 * aa(r, 'fgsm_at'):.1f}",
        applies=lambda r: {d, "fgsm_at"} <= r["results"].keys(),
        interval=lambda r: I.paired_difference(r["correct"][d], r["correct"]["fgsm_at"]),
    )


def failed_checks(r: dict, d: str) -> list[str]:
    """The checks of our attack that failed on defence ``d``."""
    return [label for key, label in CHECKS.items() if not r["results"][d][key]]


def attack_checks(r: dict) -> pd.DataFrame:
    """The checks of our own attack on every defence (pass / FAIL), with AutoAttack's gap to our PGD:
    findings about the evaluation, not about any paper, so they are a table, not claims."""
    rows = []
    for d, res in r["results"].items():
        rows.append(
            {
                "defence": DEFENCES[d][0],
                **{label: "pass" if res[key] else "FAIL" for key, label in CHECKS.items()},
                "AutoAttack − PGD L∞ (pt)": _points(res["autoattack_linf"] - res["pgd_linf"]),
                "AutoAttack − PGD L2 (pt)": _points(res["autoattack_l2"] - res["pgd_l2"]),
            }
        )
    return pd.DataFrame(rows)


def claim_specs(cfg: Config) -> list[C.Spec]:
    """The cross-paper claims as data: every paper's defence against the single-step baseline under
    AutoAttack L∞ at matched clean accuracy (the checks of our attack are :func:`attack_checks`)."""
    return [versus_fgsm_at(d, cfg) for d in PAPER_DEFENCES]


def claims(r: dict, cfg: Config) -> list[C.Claim]:
    """The claims of :func:`claim_specs`, decided on this run, each with its gates."""
    return C.evaluate(claim_specs(cfg), r)


def headline_metrics(r: dict) -> dict[str, float]:
    """metrics.json: AutoAttack L∞ and clean accuracy (%) of every defence (the leaderboard's ranking)."""
    out = {}
    for d, res in r["results"].items():
        out[f"autoattack_linf_acc_{d}"] = round(100 * res["autoattack_linf"], 2)
    for d, res in r["results"].items():
        out[f"clean_acc_{d}"] = round(100 * res["clean"], 2)
    return out


def plan(cfg: Config) -> P.StagePlan:
    """The stage's units under ``cfg`` (what it trains, what each builds on, how) and their cost (:mod:`lib.plan`)."""
    name = cfg.dataset
    n = P.train_size(name, cfg.n_train, cfg.n_val)
    plan = P.StagePlan("compare", cfg.profile, n)
    model = P.Model(cfg.model, P.shape_of(name), P.classes_of(name), tuple(sorted(cfg.model_options.items())))
    both = {d: 1 + (w > 0) for d, w in cfg.clean_weight.items()}
    passes = {
        "clean": 1,
        "fgsm_at": 2,
        "pgd_at": 11,
        "p1_generator_ensemble": 3,
        "p2_pgn": 3,
        "p2_pgn_reference": 3,
        "p3_single_step_reuse": 2,
        "p4_transfer_augmentation": 1,
        "p5_alternating_gan": 2,
    }
    clean = unit_name("clean", None, cfg.seed)

    def trained(defence: str, value, seed: int):
        def train_unit(units: U.Units) -> Trained:
            d = units.data
            source = units.get(clean).model if defence == "p4_transfer_augmentation" else None
            return fit(defence, value, d.ds, d.train, d.val, d.clean_test, cfg, source, seed)

        return train_unit

    def reseeded(defence: str, seed: int):
        def train_unit(units: U.Units) -> Trained:
            d, value = units.data, chosen_of(units)[defence].value
            source = units.get(clean).model if defence == "p4_transfer_augmentation" else None
            return fit(defence, value, d.ds, d.train, d.val, d.clean_test, cfg, source, seed)

        return train_unit

    def add(defence: str, unit: str, train_unit, deps=()) -> None:
        examples = n * (2 if defence == "p4_transfer_augmentation" else 1)  # clean + one FGSM set
        cost = passes[defence] - 1 + both.get(defence, 1)
        plan.add(unit, model, cfg.epochs, examples, cost, cfg.batch_size, train_unit, deps)

    add("clean", clean, trained("clean", None, cfg.seed))
    sweep = [clean]
    for defence, values in cfg.strengths.items():
        for v in values:
            unit = unit_name(defence, v, cfg.seed)
            if unit != clean:
                deps = (clean,) if defence == "p4_transfer_augmentation" else ()  # its FGSM set: the clean model's
                add(defence, unit, trained(defence, v, cfg.seed), deps)
                sweep.append(unit)
    add("clean", unit_name("clean", None, cfg.seed + 100), trained("clean", None, cfg.seed + 100))
    for defence in claimed(cfg.strengths):
        for s in extra_seeds(cfg):  # the chosen strength's other seeds: the choice reads the whole sweep
            add(defence, reseeded_unit(defence, s), reseeded(defence, s), tuple(sweep))
    return plan
