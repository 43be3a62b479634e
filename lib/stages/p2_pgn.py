"""p2 — Perturbation generator networks (PGN, ICLR-2020 submission): generator, minimax step, evaluation protocol.

G(grad, x, y; phi) maps the one-hot label, the image and the gradient image grad_x F(x)_y (of the
true-label probability) to a perturbation in tanh space (Carlini-Wagner's box trick):
x_adv = (tanh(atanh(2x - 1) + G) + 1) / 2. The classifier descends CE(F(x_adv), y); G ascends
CE(F(x_adv), y) - c_L * ||x_adv - x||_2^2, both from one backward pass (the penalty does not
depend on the classifier's weights). Baselines: clean training, FGM-AT and PGD-AT (L2, Madry).

The evaluation follows the paper: FGM / MIM (L2) accuracy, DeepFool and C&W rho (mean and median
L2 over SUCCESSFUL examples), black-box accuracy from an independently trained network of the same
architecture, and benign-accuracy matching: each defence's eps / c_L is picked from a sweep so
that its benign accuracy is closest to the baseline's before rho is compared.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TypedDict

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
import torch.nn as nn

import lib.data as D
import lib.models as M
import lib.plan as P
import lib.units as U
from lib import attack_settings as S
from lib import attacks as A
from lib import claims as C
from lib import intervals as I
from lib.augment import Conventional
from lib.cache import cached
from lib.errors import require
from lib.evaluate import (
    accuracy,
    accuracy_vs_norm,
    adversarial_examples,
    closest_benign,
    correct,
    mean_perturbation,
    minimal_norms,
    predict,
    relative_cost,
    rho_stats,
    robust_correct,
)
from lib.methods.pgn import (
    INPUTS,
    PGNGenerator,
    PGNSource,
    pgn_attack,
    train_attacker,
)
from lib.report import ERROR_BARS, accuracy_curve, comparison, evaluation, legend_outside, widen
from lib.runtime import device, seed_everything
from lib.stages import Result
from lib.timing import interleaved, per_batch
from lib.train import (
    LR_SCHEDULES,
    AttackSource,
    Clean,
    TrainConfig,
    TrainResult,
    Validation,
    train,
)

# --------------------------------------------------------------------------------------------------
# The stage: configuration, training of every defence, the evaluation protocol, tables, figures.

DEFENCES = ("Baseline", "FGM-AT", "PGD-AT", "PGN")
ATTACKS = ("FGM", "MIM", "DeepFool", "C&W")
PAPER_TABLE = {"cifar100": "table2_cifar100", "cifar10": "table3_cifar10"}
STAND_IN_FOR = "cifar10"  # a dataset the paper did not use is shown beside the paper's CIFAR-10 table
_PAPER_KEYS = (
    "fgm_acc",
    "mim_acc",
    "df_mean",
    "df_median",
    "cw_mean",
    "cw_median",
    "bb_fgm",
    "bb_mim",
    "bb_df",
    "bb_cw",
    "benign",
    "sec",
)
_PAPER_ROWS = {  # Tables 2 (CIFAR-100, eps 0.02, c_L 50) and 3 (CIFAR-10, eps 0.1, c_L 50); s/epoch on one RTX 2080 Ti
    "cifar100": {
        "Baseline": (0.1173, 0.0167, 0.0994, 0.0626, 0.0791, 0.0503, 0.3843, 0.2913, 0.6688, 0.6659, 0.7002, 8.18),
        "FGM-AT": (0.2213, 0.1068, 0.1669, 0.1089, 0.1334, 0.0867, 0.5211, 0.5115, 0.6902, 0.6894, 0.6993, 25.12),
        "PGD-AT": (0.2139, 0.1000, 0.1625, 0.1061, 0.1305, 0.0851, 0.5164, 0.5014, 0.6906, 0.6880, 0.7000, 175.86),
        "PGN": (0.3906, 0.3444, 0.3184, 0.2064, 0.2617, 0.1674, 0.6428, 0.6456, 0.6958, 0.6961, 0.7004, 51.77),
    },
    "cifar10": {
        "Baseline": (0.2934, 0.0939, 0.2129, 0.1844, 0.1742, 0.1596, 0.4979, 0.3633, 0.8527, 0.8611, 0.9189, 8.28),
        "FGM-AT": (0.6335, 0.5543, 0.5135, 0.4502, 0.4196, 0.3919, 0.8428, 0.8510, 0.9119, 0.9116, 0.9180, 25.14),
        "PGD-AT": (0.6259, 0.5426, 0.4977, 0.4370, 0.4091, 0.3820, 0.8369, 0.8468, 0.9104, 0.9100, 0.9172, 175.25),
        "PGN": (0.6534, 0.5958, 0.5102, 0.4483, 0.4365, 0.4062, 0.8501, 0.8568, 0.9127, 0.9120, 0.9186, 52.19),
    },
}
PAPER = {ds: {d: dict(zip(_PAPER_KEYS, v)) for d, v in rows.items()} for ds, rows in _PAPER_ROWS.items()}


@dataclass
class Config:
    """Parameters of the p2 stage (see profiles/<stage>.yaml; defaults = the paper's setting where it gives one)."""

    profile: str = "smoke"
    datasets: list[str] = field(default_factory=lambda: ["cifar100", "cifar10"])
    n_train: int | None = None
    n_test: int | None = None  # FGM, MIM, AutoAttack and black-box accuracy
    n_clean_test: int | None = None  # benign accuracy (None: every test image; it is cheap and the matching reads it)
    n_val: int = 5000  # validation images held out of the training split (the convergence gates read them)
    n_rho: int = 1000  # DeepFool and C&W (the paper does not say how many; C&W is costly)
    width: float = 1.0  # ConvPool-CNN width multiplier
    gen_width: int = 128
    gen_dense: int = 1024
    epochs: int = 200
    pgd_epochs: int | None = None  # PGD-AT's epochs (None: ``epochs``): it converges slower than the other defences
    batch_size: int = 128
    lr: float = 5e-4
    lr_schedule: str = "constant"  # the classifier's Adam lr: constant (the paper) or cosine-annealed over `epochs`
    gen_lr: float | None = None  # the generator's Adam lr; None = lr (the paper gives one lr)
    ema_decay: float = 0.998
    clean_weight: float = 0.0  # the reference trains the classifier on adversarial examples only
    grad_reduction: str = "mean"  # gradient of the MEAN true-label probability (reference code)
    at_eps: list[float] = field(default_factory=lambda: [0.02, 0.1, 0.5, 1.0])  # FGM-AT sweep (L2)
    pgd_eps: list[float] = field(default_factory=lambda: [0.02, 0.1, 0.5, 1.0])  # PGD-AT sweep (L2)
    pgd_train_steps: int = 10
    c_l: list[float] = field(default_factory=lambda: [10.0, 50.0, 200.0])  # PGN sweep
    main_c_l: float = 50.0  # the c_L of the ablation and capacity runs (in c_l)
    capacity: list[float] = field(default_factory=lambda: [0.5, 2.0])  # extra width multipliers for PGN (Fig. 5 right)
    ablation: bool = True
    ablation_min_drop: float = (
        0.05  # ours (the paper gives no threshold): a relative rho_cw drop that counts as 'matters'
    )
    fgm_eps: float = 0.5
    mim_eps: float = 0.5
    mim_steps: int = 100
    df_steps: int = 100
    cw_steps: int = 100
    cw_binary_steps: int = 9
    cw_initial_const: float = 1e-2
    cw_lr: float = 1e-2
    track_eps: float = 0.5  # the FGM-AT run tracked per epoch (Fig. 2 right; in at_eps)
    track_n: int = 500
    track_every: int = 10
    fig3_eps: float = 0.5  # the fixed FGM-AT / PGD-AT classifiers of Fig. 3 (in at_eps and pgd_eps)
    attack_c_l: list[float] = field(
        default_factory=lambda: [0.5, 2.0, 10.0, 50.0]
    )  # PGN attackers vs fixed classifiers
    attack_epochs: int = 20
    attack_eps: list[float] = field(
        default_factory=lambda: [0.1, 0.25, 0.5, 1.0, 2.0]
    )  # FGM / PGD attack curves of Fig. 3
    attack_pgd_steps: int = 20
    augment: bool = True  # random flip + shift of every training batch (the reference code; the paper does not say)
    leaky_generator: bool = True  # leaky ReLU + He init in G, its image input in [-1, 1] (the reference code)
    leaky_classifier: bool = True  # leaky ReLU after every conv + He init in the classifier (the reference code)
    shared_adam: bool = True  # one Adam for both players, the generator at the classifier's lr (the reference code)
    ema_both: bool = True  # the weights' moving average over both networks, G's used to measure G (the reference code)
    reference_c_l: float = 70.0  # the reference code's default c_L (the paper: 50), in our units: the reference check's
    autoattack: str = "standard"  # AutoAttack-L2 (at fgm_eps) in the reference check: "standard" or "apgd-ce+t"
    autoattack_iterations: int = 100
    autoattack_targets: int = 9
    reference_check: bool = (
        False  # retrain the matched FGM-AT / PGN pair with the reference code's choices (one at a time, then both)
    )
    reference_shift: float = 0.125  # the reference's random shift, as a fraction of the image size (4 of 32 pixels)
    n_examples: int = 6
    seed: int = 0
    max_batches: int | None = None  # cap batches per epoch (tests only)
    timing_rounds: int = 7  # the cost claim: interleaved rounds of the matched defences' training (lib.timing)
    timing_batches: int = 20  # batches per defence per round

    def validate(self) -> Config:
        require(len(self.datasets) >= 1, "datasets must not be empty")
        require(int(self.timing_rounds) >= 1, f"timing_rounds must be >= 1, got {self.timing_rounds}")
        require(int(self.timing_batches) >= 1, f"timing_batches must be >= 1, got {self.timing_batches}")
        for name in self.datasets:
            D.check_name(name)
        for name in (
            "epochs",
            "batch_size",
            "gen_width",
            "gen_dense",
            "pgd_train_steps",
            "mim_steps",
            "df_steps",
            "cw_steps",
            "cw_binary_steps",
            "track_n",
            "track_every",
            "attack_epochs",
            "attack_pgd_steps",
            "n_examples",
        ):
            require(int(getattr(self, name)) >= 1, f"{name} must be >= 1, got {getattr(self, name)}")
        require(self.lr_schedule in LR_SCHEDULES, f"lr_schedule must be one of {', '.join(LR_SCHEDULES)}")
        require(
            self.pgd_epochs is None or int(self.pgd_epochs) >= 1,
            f"pgd_epochs must be >= 1 or null, got {self.pgd_epochs}",
        )
        require(self.gen_lr is None or self.gen_lr > 0, f"gen_lr must be > 0 or null, got {self.gen_lr}")
        require(0 <= self.ablation_min_drop < 1, f"ablation_min_drop must be in [0, 1), got {self.ablation_min_drop}")
        for name in ("lr", "width", "fgm_eps", "mim_eps", "cw_initial_const", "cw_lr"):
            require(getattr(self, name) > 0, f"{name} must be > 0, got {getattr(self, name)}")
        require(
            all(e > 0 for e in [*self.at_eps, *self.pgd_eps, *self.attack_eps]),
            "at_eps, pgd_eps and attack_eps must be > 0",
        )
        require(all(c >= 0 for c in [*self.c_l, *self.attack_c_l, self.main_c_l]), "c_L values must be >= 0")
        require(all(m > 0 for m in self.capacity), "capacity multipliers must be > 0")
        require(self.main_c_l in self.c_l, f"main_c_l {self.main_c_l} must be one of c_l {self.c_l}")
        require(
            self.track_eps in self.at_eps and self.fig3_eps in self.at_eps and self.fig3_eps in self.pgd_eps,
            "track_eps must be in at_eps, fig3_eps in at_eps and pgd_eps",
        )
        require(self.ema_decay is None or 0 < self.ema_decay < 1, f"ema_decay must be in (0, 1), got {self.ema_decay}")
        require(0 <= self.clean_weight < 1, f"clean_weight must be in [0, 1), got {self.clean_weight}")
        require(
            self.grad_reduction in ("mean", "sum"), f"grad_reduction must be mean or sum, got '{self.grad_reduction}'"
        )
        for name in ("n_train", "n_test", "n_clean_test", "n_rho"):
            require(getattr(self, name) is None or getattr(self, name) > 0, f"{name} must be positive")
        require(int(self.n_val) >= 1, f"n_val must be >= 1, got {self.n_val}")
        require(
            not (self.reference_check and all(getattr(self, k) for k in REFERENCE_CHOICES)),
            "reference_check retrains with each reference choice the protocol does not make: it needs at least one of "
            + ", ".join(REFERENCE_CHOICES)
            + " false",
        )
        require(self.reference_c_l >= 0, f"reference_c_l must be >= 0, got {self.reference_c_l}")
        S.check_autoattack_settings(self.autoattack, self.autoattack_iterations, targets=self.autoattack_targets)
        require(0 <= self.reference_shift < 0.5, f"reference_shift must be in [0, 0.5), got {self.reference_shift}")
        return self

    def epochs_of(self, kind: str) -> int:
        """The epochs ``kind`` trains: ``pgd_epochs`` for PGD-AT when set, else ``epochs``."""
        return self.pgd_epochs if kind == "PGD-AT" and self.pgd_epochs is not None else self.epochs

    @property
    def generator_lr(self) -> float:
        return self.lr if self.gen_lr is None else self.gen_lr

    @property
    def cw(self) -> dict:
        """C&W-L2 parameters (the paper: 100 iterations, binary search over c)."""
        return {
            "steps": self.cw_steps,
            "binary_steps": self.cw_binary_steps,
            "initial_const": self.cw_initial_const,
            "lr": self.cw_lr,
        }


REFERENCE_CHOICES = ("augment", "leaky_generator", "leaky_classifier", "shared_adam", "ema_both")
REFERENCE_EMA = 0.998  # the reference's decay per step ...
REFERENCE_STEPS_PER_EPOCH = 391  # ... of which it takes 391 an epoch (CIFAR's 50,000 images in batches of 128)


@dataclass(frozen=True)
class Choices:
    """How a classifier (and PGN) is trained where the reference code (ATPGN) and the paper's protocol
    may differ; ``ema_decay`` None: the config's."""

    augment: bool = False
    leaky_generator: bool = False
    leaky_classifier: bool = False
    shared_adam: bool = False
    ema_both: bool = False
    ema_decay: float | None = None

    @classmethod
    def of(cls, cfg: Config) -> Choices:
        return cls(**{k: getattr(cfg, k) for k in REFERENCE_CHOICES})


def reference_classifier(model: nn.Module, seed: int) -> nn.Module:
    """The ConvPool-CNN as the reference code builds it (ATPGN ``models/PGN.py``): leaky ReLU (slope 0.2, TF's
    default) after every convolution, the last one included, and He-normal weights (TF's ``VarianceScaling(2.0)``:
    std sqrt(2 / fan_in)) with zero biases, drawn from ``seed``. Ours (the paper says neither): ReLU, none after
    the last convolution, torch's default init."""
    last = max(i for i, layer in enumerate(model.net) if isinstance(layer, nn.Conv2d))
    layers: list[nn.Module] = []
    for i, layer in enumerate(model.net):
        layers.append(nn.LeakyReLU(0.2) if isinstance(layer, nn.ReLU) else layer)
        if i == last:
            layers.append(nn.LeakyReLU(0.2))
    model.net = nn.Sequential(*layers)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for layer in model.net:
            if isinstance(layer, nn.Conv2d):
                nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
                nn.init.zeros_(layer.bias)
    return model


def reference_flip_shift(shift: float = 0.125) -> Conventional:
    """ATPGN's augmentation of every training batch: a random horizontal flip and a random shift of up to
    ``shift`` of the image size (4 of CIFAR's 32 pixels)."""
    return Conventional(degrees=0.0, flip=True, scale=(1.0, 1.0), shift=shift, brightness=0.0, noise_std=0.0)


def reference_decay(steps_per_epoch: int) -> float:
    """The reference's EMA decay (0.998 a step, 391 steps an epoch) scaled to ``steps_per_epoch``: the same
    half-life in epochs (0.998 ** (391 / steps)), so the average spans the same share of training."""
    return REFERENCE_EMA ** (REFERENCE_STEPS_PER_EPOCH / steps_per_epoch)


@dataclass
class Data:
    """One dataset's splits: training, validation (held out of training), the attacks' test set, its
    first ``n_rho`` images for the minimal attacks, and the benign-accuracy test set."""

    ds: D.Dataset
    train: D.Split
    val: tuple[torch.Tensor, torch.Tensor]
    test: tuple[torch.Tensor, torch.Tensor]
    rho: tuple[torch.Tensor, torch.Tensor]
    clean: tuple[torch.Tensor, torch.Tensor]


def load_data(name: str, cfg: Config, data_dir) -> Data:
    """Dataset ``name`` subsampled as configured."""
    ds = D.load(name, data_dir)
    x, y = D.tensors(D.subset(ds.test, cfg.n_test, cfg.seed + 1, f"{name} test"))
    n_rho = len(y) if cfg.n_rho is None else cfg.n_rho
    for what, n in (("n_rho", n_rho), ("track_n", cfg.track_n), ("n_examples", cfg.n_examples)):
        require(n <= len(y), f"{what} {n} must not exceed the {len(y)} test images of {name}")
    train_split, val_split = D.hold_out(
        D.subset(ds.train, cfg.n_train, cfg.seed, f"{name} train"), cfg.n_val, cfg.seed, f"{name} train"
    )
    clean = D.tensors(D.subset(ds.test, cfg.n_clean_test, cfg.seed + 1, f"{name} test"))
    return Data(ds, train_split, D.tensors(val_split), (x, y), (x[:n_rho], y[:n_rho]), clean)


def build_generator(
    data: Data, cfg: Config, use: tuple[str, ...] = INPUTS, seed: int = 0, leaky: bool = False
) -> PGNGenerator:
    """A PGN generator for the dataset's shape; initial weights depend only on ``seed``."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 11)
        return PGNGenerator(data.ds.shape, data.ds.num_classes, cfg.gen_width, cfg.gen_dense, use, leaky).to(device())


def defence_source(
    kind: str,
    value: float | None,
    data: Data,
    cfg: Config,
    use: tuple[str, ...] = INPUTS,
    choices: Choices = Choices(),
    ema_decay: float | None = None,
) -> Clean:
    """The training source of a defence: none, FGM (L2), PGD (L2, random start) or the PGN generator (its
    generator, optimiser and moving average as ``choices`` say; ``ema_decay``: the classifier's)."""
    require(kind in DEFENCES, f"unknown defence '{kind}'; choose one of {DEFENCES}")
    if kind == "FGM-AT":
        return AttackSource(A.fgm, eps=value)
    if kind == "PGD-AT":
        return AttackSource(A.pgd, eps=value, steps=cfg.pgd_train_steps, norm="l2")
    if kind == "PGN":
        return PGNSource(
            build_generator(data, cfg, use, cfg.seed, choices.leaky_generator),
            c_l=value,
            lr=cfg.lr if choices.shared_adam else cfg.generator_lr,
            reduction=cfg.grad_reduction,
            shared=choices.shared_adam,
            ema_decay=ema_decay if choices.ema_both else None,
        )
    return Clean()


def defence_run(
    kind: str,
    value: float | None,
    data: Data,
    cfg: Config,
    use: tuple[str, ...] = INPUTS,
    width: float | None = None,
    seed: int | None = None,
    choices: Choices | None = None,
) -> tuple[nn.Module, Clean, TrainConfig, torch.utils.data.DataLoader]:
    """The untrained ConvPool-CNN, training source, training config (Adam, EMA of the weights as configured)
    and loader of ``kind`` at ``value`` (eps or c_L). ``choices``: where the reference code and the paper's
    protocol may differ (None: the config's)."""
    seed = cfg.seed if seed is None else seed
    choices = Choices.of(cfg) if choices is None else choices
    ema_decay = cfg.ema_decay if choices.ema_decay is None else choices.ema_decay
    model = M.build("convpool_cnn", data.ds.shape, data.ds.num_classes, seed=seed, width=width or cfg.width)
    if choices.leaky_classifier:
        model = reference_classifier(model, seed)
    model = model.to(device())
    source = defence_source(kind, value, data, cfg, use, choices, ema_decay)
    tc = TrainConfig(
        epochs=cfg.epochs_of(kind),
        batch_size=cfg.batch_size,
        lr=cfg.lr,
        lr_schedule=cfg.lr_schedule,
        optimizer="adam",
        clean_weight=cfg.clean_weight if kind != "Baseline" else 0.0,
        ema_decay=ema_decay,
        seed=seed,
        augment=reference_flip_shift(cfg.reference_shift) if choices.augment else None,
    )
    loader = D.loader(data.train, cfg.batch_size, shuffle=True, seed=seed, with_index=True)
    return model, source, tc, loader


def train_defence(
    kind: str,
    value: float | None,
    data: Data,
    cfg: Config,
    use: tuple[str, ...] = INPUTS,
    width: float | None = None,
    seed: int | None = None,
    on_epoch_end=None,
    desc: str = "",
    choices: Choices | None = None,
) -> tuple[TrainResult, Clean]:
    """A ConvPool-CNN trained with ``kind`` at ``value`` (see :func:`defence_run`), stored in the model store."""
    model, source, tc, loader = defence_run(kind, value, data, cfg, use, width, seed, choices)
    desc = desc or f"{kind} {value if value is not None else ''}"
    on_epoch_end = Validation(*data.val) if on_epoch_end is None else on_epoch_end
    result = train(
        model,
        loader,
        tc,
        source,
        on_epoch_end=on_epoch_end,
        max_batches=cfg.max_batches,
        desc=desc,
        cache_as=f"{data.ds.name} {desc}",
    )
    return result, source


TIMED = ("FGM-AT", "PGN", "PGD-AT")


def time_defences(matched: dict[str, Trained], data: Data, cfg: Config) -> dict[str, list[float]]:
    """Seconds per training batch of the matched FGM-AT, PGN and PGD-AT, in ``timing_rounds`` interleaved rounds
    of ``timing_batches`` batches each (:func:`lib.timing.interleaved`): a copy of the trained classifier and a
    fresh source of its defence per run. Stored like a model (a re-render reports the measured run)."""
    timed = [k for k in TIMED if k in matched]

    def run(k: str):
        t = matched[k]

        def once() -> float:
            _, source, tc, loader = defence_run(k, t.value, data, cfg, t.use, t.width)
            model = copy.deepcopy(t.model)
            result = train(model, loader, replace(tc, epochs=1), source, max_batches=cfg.timing_batches, desc=k)
            return per_batch(result, min(cfg.timing_batches, len(loader)))

        return once

    def measure() -> dict:
        return {"timing": interleaved({k: run(k) for k in timed}, cfg.timing_rounds)}

    modules = {k: matched[k].model for k in timed}
    return cached(f"{data.ds.name} {TIMING}", modules, measure, key=(cfg, data.train), seeded=True)["timing"]


@dataclass
class Trained:
    """One trained classifier and what the protocol measured on it."""

    kind: str
    value: float | None
    result: TrainResult
    benign: float
    cw_norms: torch.Tensor  # per rho-set image: 0 misclassified, inf attack failed, else the C&W L2 norm
    source: Clean | None = None
    width: float = 1.0
    use: tuple[str, ...] = INPUTS

    @property
    def model(self) -> nn.Module:
        return self.result.final

    @property
    def cw(self) -> dict:
        return rho_stats(self.cw_norms)


def fit(kind: str, value: float | None, data: Data, cfg: Config, **kw) -> Trained:
    """Train one defence, then its benign accuracy and C&W minimal norms (every model gets these two)."""
    result, source = train_defence(kind, value, data, cfg, **kw)
    model = result.final
    return Trained(
        kind,
        value,
        result,
        accuracy(model, *data.clean),
        minimal_norms(model, *data.rho, A.cw_l2, **cfg.cw),
        source,
        kw.get("width") or cfg.width,
        kw.get("use", INPUTS),
    )


class Tracker(Validation):
    """``on_epoch_end`` hook for Fig. 2 right: validation accuracy every epoch; benign accuracy and
    rho_cw every ``every`` epochs."""

    def __init__(self, data: Data, cfg: Config):
        super().__init__(*data.val)
        self.x, self.y = data.test[0][: cfg.track_n], data.test[1][: cfg.track_n]
        # only the settings it reads: they join the tracked model's key in the model store
        self.every, self.epochs, self.cw = cfg.track_every, cfg.epochs, cfg.cw

    def __call__(self, epoch: int, model: nn.Module) -> dict:
        out = super().__call__(epoch, model)
        if (epoch + 1) % self.every and epoch + 1 != self.epochs:
            return out
        stats = rho_stats(minimal_norms(model, self.x, self.y, A.cw_l2, **self.cw))
        return {**out, "benign": accuracy(model, self.x, self.y), "rho_cw": stats["mean_l2"]}


def protocol(model: nn.Module, data: Data, cfg: Config, cw_norms: torch.Tensor, transfers: dict) -> dict:
    """The paper's table for one defence: white-box FGM / MIM accuracy, DeepFool / C&W rho, black-box accuracy."""
    x, y = data.test
    df = rho_stats(minimal_norms(model, *data.rho, A.deepfool, steps=cfg.df_steps))
    cw = rho_stats(cw_norms)
    per_image = {
        "fgm": robust_correct(model, x, y, A.fgm, eps=cfg.fgm_eps),
        "mim": robust_correct(model, x, y, A.mim, eps=cfg.mim_eps, steps=cfg.mim_steps, norm="l2"),
    }
    return {
        "fgm_acc": float(per_image["fgm"].float().mean()),
        "mim_acc": float(per_image["mim"].float().mean()),
        "correct": {k: v.numpy().astype(np.int8) for k, v in per_image.items()},
        "df_mean": df["mean_l2"],
        "df_median": df["median_l2"],
        "df_success": df["success_rate"],
        "cw_mean": cw["mean_l2"],
        "cw_median": cw["median_l2"],
        "cw_success": cw["success_rate"],
        **{f"bb_{a}": accuracy(model, x_adv, y_adv) for a, (x_adv, y_adv) in transfers.items()},
        "bb_correct": {a: correct(model, *transfers[a]).numpy().astype(np.int8) for a in ("fgm", "mim")},
    }


def transfer_examples(surrogate: nn.Module, data: Data, cfg: Config) -> dict:
    """Black-box examples crafted once on the independent network: FGM, MIM (test set), DeepFool, C&W (rho set)."""
    x, y = data.test
    return {
        "fgm": (adversarial_examples(surrogate, x, y, A.fgm, eps=cfg.fgm_eps), y),
        "mim": (adversarial_examples(surrogate, x, y, A.mim, eps=cfg.mim_eps, steps=cfg.mim_steps, norm="l2"), y),
        "df": (adversarial_examples(surrogate, *data.rho, A.deepfool, steps=cfg.df_steps), data.rho[1]),
        "cw": (adversarial_examples(surrogate, *data.rho, A.cw_l2, **cfg.cw), data.rho[1]),
    }


def strength_point(param: float, model: nn.Module, x_adv: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> dict:
    """One point of Fig. 3: the attack's setting, its mean L2 perturbation, the model's accuracy and per-image correctness."""
    right = correct(model, x_adv, y)
    acc = float(right.float().mean())
    return {
        "param": param,
        "mean_l2": mean_perturbation(x_adv, x),
        "acc": acc,
        "correct": right.numpy().astype(np.int8),
    }


def attack_strength(units: U.Units, name: str, kind: str) -> dict:
    """Fig. 3 for the fixed classifier ``kind`` at ``fig3_eps``: (mean L2, accuracy) for FGM and PGD-L2 over
    ``attack_eps`` and for PGN attackers (its units) over ``attack_c_l``; each point keeps its per-image correctness
    (``correct``) for the claim's interval."""
    data, cfg = units.data[name], units.cfg
    model = units.get(unit(name, swept(kind, cfg.fig3_eps))).model
    x, y = data.test
    out: dict = {"FGM": [], "PGD": [], "PGN": [], "generators": {}}
    for eps in cfg.attack_eps:
        for attack_name, attack, params in (
            ("FGM", A.fgm, {}),
            ("PGD", A.pgd, {"steps": cfg.attack_pgd_steps, "norm": "l2"}),
        ):
            x_adv = adversarial_examples(model, x, y, attack, eps=eps, **params)
            out[attack_name].append(strength_point(eps, model, x_adv, x, y))
    for c_l in cfg.attack_c_l:
        g = units.get(unit(name, attacker(kind, c_l, cfg)))
        x_adv = adversarial_examples(model, x, y, pgn_attack, generator=g, reduction=cfg.grad_reduction)
        out["PGN"].append(strength_point(c_l, model, x_adv, x, y))
        out["generators"][c_l] = g
    return out


def train_attack_generator(units: U.Units, name: str, kind: str, c_l: float) -> PGNGenerator:
    """A PGN attacker (Fig. 3): G alone against the fixed classifier ``kind`` at ``fig3_eps``."""
    data, cfg = units.data[name], units.cfg
    model = units.get(unit(name, swept(kind, cfg.fig3_eps))).model
    return train_attacker(
        build_generator(data, cfg, seed=cfg.seed + 1),
        model,
        D.loader(data.train, cfg.batch_size, shuffle=True, seed=cfg.seed),
        c_l,
        cfg.generator_lr,
        cfg.attack_epochs,
        cfg.grad_reduction,
        cfg.max_batches,
        desc=f"PGN attacker c_L {c_l:g}",
        seed=cfg.seed,
    )


def reference_variants(cfg: Config, steps_per_epoch: int) -> dict[str, dict]:
    """The reference code's (ATPGN) choices that our protocol does not make, one at a time, then all
    together (its generator included): each a change of PGN's training (its c_L, or :class:`Choices`
    fields). A choice the protocol already makes (``cfg``) is no difference, so it has no row."""
    scaled = {"ema_both": True, "ema_decay": round(reference_decay(steps_per_epoch), 4)}
    one_at_a_time = {
        f"c_L {cfg.reference_c_l:g} (the reference's default)": {"c_l": cfg.reference_c_l},
        "one Adam for both players": {"shared_adam": True},
        f"EMA over both networks (0.998 a reference step = {scaled['ema_decay']:g} a step here)": scaled,
        "leaky ReLU + He init in the classifier": {"leaky_classifier": True},
        "random flip + shift": {"augment": True},
    }
    new = {
        k: v
        for k, v in one_at_a_time.items()
        if "c_l" in v or any(not getattr(cfg, c) for c in v if c in REFERENCE_CHOICES)
    }
    # the reference generator (leaky ReLU, He init, image in [-1, 1]) has no row of its own: alone it had no
    # clear effect in a run on 12,000 images (+1.3 [-2.0, 4.9] points under FGM, -0.3 [-4.0, 3.3] under
    # AutoAttack-L2; one seed, 300 images), for a model's training time; it is part of "all of them"
    together = {k: v for opts in one_at_a_time.values() for k, v in opts.items()} | {"leaky_generator": True}
    return {OURS: {}, **new, "all of them (reference-faithful PGN)": together}


REFERENCE_ATTACKS = ("fgm", "mim", "autoattack")
OURS = "ours (this profile's protocol)"  # the reference check's row of the PGN it retrains


def cl_curve(pgns: dict[float, Trained], data: Data, cfg: Config) -> list[dict]:
    """What c_L does, measured on the swept PGNs: per c_L, the mean L2 size of its generator's perturbations
    of the test images at the end of training (the moving average's, when there is one), its benign
    accuracy and its accuracy under the paper's white-box FGM and MIM: the curve c_L is chosen from."""
    x, y = data.test
    out = []
    for c_l, t in sorted(pgns.items()):
        x_adv = adversarial_examples(
            t.model, x, y, pgn_attack, generator=t.source.evaluated.eval(), reduction=cfg.grad_reduction
        )
        with evaluation(f"{_label(t)} (c_L curve: FGM, MIM)"):
            fgm = accuracy(t.model, adversarial_examples(t.model, x, y, A.fgm, eps=cfg.fgm_eps), y)
            mim = accuracy(
                t.model, adversarial_examples(t.model, x, y, A.mim, eps=cfg.mim_eps, steps=cfg.mim_steps, norm="l2"), y
            )
        out.append(
            {"c_l": c_l, "mean_l2": mean_perturbation(x_adv, x), "benign": t.benign, "fgm_acc": fgm, "mim_acc": mim}
        )
    return out


def cl_table(r: dict) -> pd.DataFrame:
    """The c_L curve as a table: c_L, PGN's mean L2 perturbation and its ratio to the matched FGM-AT's eps, accuracies (%)."""
    budget = r["matched"]["FGM-AT"].value
    return pd.DataFrame(
        [
            {
                "c_L": p["c_l"],
                "PGN mean L2": p["mean_l2"],
                f"× FGM-AT eps {budget:g}": p["mean_l2"] / budget,
                "benign %": 100 * p["benign"],
                "FGM %": 100 * p["fgm_acc"],
                "MIM %": 100 * p["mim_acc"],
            }
            for p in r["cl_curve"]
        ]
    )


def figure_cl(r: dict, cfg: Config, subtitle: str) -> plt.Figure:
    """c_L against PGN's mean L2 perturbation (left, with the 2x band around the matched FGM-AT's eps) and
    against its accuracy under FGM and MIM (right)."""
    pts, budget = r["cl_curve"], r["matched"]["FGM-AT"].value
    c = [p["c_l"] for p in pts]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    left.plot(c, [p["mean_l2"] for p in pts], marker="o", color=COLORS["PGN"], label="PGN's mean L2")
    left.axhspan(budget / 2, 2 * budget, color="0.85", label=f"within 2x of FGM-AT's eps {budget:g}")
    left.set(xscale="log", xlabel="c_L (our units = the reference's)", ylabel="mean L2 perturbation")
    for key, name, style in (("fgm_acc", "FGM", "-"), ("mim_acc", "MIM", "--")):
        right.plot(c, [100 * p[key] for p in pts], ls=style, marker="o", color=COLORS["PGN"], label=f"PGN under {name}")
    right.set(xscale="log", xlabel="c_L", ylabel="accuracy (%)")
    for ax in (left, right):
        ax.legend(fontsize=7, loc="best")
    fig.suptitle(f"What c_L does to PGN ({subtitle})")
    fig.tight_layout()
    return fig


def reference_desc(opts: dict) -> str:
    """The unit of PGN retrained with the reference choices ``opts`` (at their c_L, else the matched PGN's)."""
    c_l = f"{opts['c_l']:g}" if "c_l" in opts else "matched"
    return f"PGN c_L {c_l} (reference: {' '.join(k for k in sorted(opts) if k != 'ema_decay')})"


def reference_check(units: U.Units, name: str, matched: dict[str, Trained], transfers: dict) -> dict[str, dict]:
    """Which reference-code difference, if any, explains PGN losing to FGM-AT: the matched PGN retrained with
    each reference choice alone and with all of them (its units), each under the paper's white-box FGM and MIM and
    AutoAttack-L2 (at ``fgm_eps``), per test image; the matched FGM-AT measured the same way. The
    reference-faithful PGN also gets the paper's whole protocol (its Table 3 row)."""
    data, cfg = units.data[name], units.cfg
    pgn = matched["PGN"]
    out = {"FGM-AT": _robust(matched["FGM-AT"], data, cfg)}
    for variant, opts in reference_variants(cfg, math.ceil(len(data.train) / cfg.batch_size)).items():
        t = pgn if not opts else units.get(unit(name, reference_desc(opts)))
        out[variant] = {**_robust(t, data, cfg), "c_l": t.value, "sec_per_epoch": t.result.sec_per_epoch}
        if variant.startswith("all of them"):
            out[variant]["protocol"] = protocol(t.model, data, cfg, t.cw_norms, transfers)
            out[variant]["trained"] = t
    return out


def train_reference_variant(units: U.Units, name: str, opts: dict) -> Trained:
    """The matched PGN retrained with the reference choices ``opts`` (at their c_L, else the matched one)."""
    cfg = units.cfg
    c_l = opts.get("c_l", matched_of(units, name)["PGN"].value)
    choices = replace(Choices.of(cfg), **{k: v for k, v in opts.items() if k != "c_l"})
    return fit("PGN", c_l, units.data[name], cfg, choices=choices)


def _robust(t: Trained, data: Data, cfg: Config) -> dict:
    """Benign accuracy and, per test image, whether ``t`` resists FGM, MIM and AutoAttack-L2 (at ``fgm_eps``)."""
    x, y = data.test
    with evaluation(f"{_label(t)} (FGM, MIM, AutoAttack-L2)"):
        correct = {
            "fgm": robust_correct(t.model, x, y, A.fgm, eps=cfg.fgm_eps),
            "mim": robust_correct(t.model, x, y, A.mim, eps=cfg.mim_eps, steps=cfg.mim_steps, norm="l2"),
            "autoattack": robust_correct(
                t.model,
                x,
                y,
                A.autoattack,
                eps=cfg.fgm_eps,
                norm="l2",
                version=cfg.autoattack,
                iterations=cfg.autoattack_iterations,
                targets=cfg.autoattack_targets,
            ),
        }
    return {"benign": t.benign, "correct": {k: v.numpy().astype(np.int8) for k, v in correct.items()}}


def variants(units: U.Units, name: str, main: Trained) -> tuple[dict, dict]:
    """PGN at ``main_c_l`` retrained without each input (Fig. 8's ablation) and at each extra width (Fig. 5 right)."""
    cfg = units.cfg
    ablation = {"all inputs": main}
    if cfg.ablation:
        for drop in INPUTS:
            ablation[f"no {drop}"] = units.get(unit(name, f"PGN ablation: no {drop}"))
    capacity = {cfg.width: main}
    for m in cfg.capacity:
        capacity[cfg.width * m] = units.get(unit(name, f"PGN width x{m:g}"))
    return ablation, capacity


BASELINE = "Baseline (clean)"
SURROGATE = "independent network (black-box source)"
TIMING = "timing runs"


def unit(name: str, desc: str) -> str:
    """A unit of dataset ``name``."""
    return f"{name} {desc}"


def swept(kind: str, value: float) -> str:
    """The unit of defence ``kind`` at strength ``value`` (eps or c_L)."""
    return f"{kind} eps {value:g}" if kind != "PGN" else f"PGN c_L {value:g}"


def attacker(kind: str, c_l: float, cfg: Config) -> str:
    """The unit of Fig. 3's PGN attacker at ``c_l`` against the fixed classifier ``kind`` at ``fig3_eps``."""
    return f"PGN attacker c_L {c_l:g} against {swept(kind, cfg.fig3_eps)}"


def sweep_of(units: U.Units, name: str) -> dict[tuple, Trained]:
    """Every defence at every strength of the sweep, the Baseline first: (defence, strength) -> the trained model."""
    cfg = units.cfg
    sweep = {("Baseline", None): units.get(unit(name, BASELINE))}
    for kind, values in (("FGM-AT", cfg.at_eps), ("PGD-AT", cfg.pgd_eps), ("PGN", cfg.c_l)):
        sweep |= {(kind, v): units.get(unit(name, swept(kind, v))) for v in values}
    return sweep


def matched_of(units: U.Units, name: str) -> dict[str, Trained]:
    """Per defence, the strength whose benign accuracy is closest to the Baseline's (the paper's fair comparison)."""
    sweep = sweep_of(units, name)
    baseline = sweep[("Baseline", None)]
    matched = {"Baseline": baseline}
    for kind in DEFENCES[1:]:
        key, _ = closest_benign({k: t.benign for k, t in sweep.items() if k[0] == kind}, baseline.benign)
        matched[kind] = sweep[key]
    return matched


def run_dataset(units: U.Units, name: str) -> DatasetMeasurements:
    """Every training run (the units) and measurement of the stage on one dataset."""
    cfg = units.cfg
    seed_everything(cfg.seed)
    data = units.data[name]
    sweep = sweep_of(units, name)
    surrogate = units.get(unit(name, SURROGATE)).final
    matched = matched_of(units, name)
    transfers = transfer_examples(surrogate, data, cfg)
    table = {}
    for kind, t in matched.items():
        with evaluation(f"{name} {_label(t)} (FGM, MIM, DeepFool, C&W, black-box)"):
            table[kind] = protocol(t.model, data, cfg, t.cw_norms, transfers)
    ablation, capacity = variants(units, name, sweep[("PGN", cfg.main_c_l)])
    strength = {kind: attack_strength(units, name, kind) for kind in ("FGM-AT", "PGD-AT")}
    pgn = matched["PGN"]
    x_pgn = adversarial_examples(
        pgn.model, *data.test, pgn_attack, generator=pgn.source.evaluated.eval(), reduction=cfg.grad_reduction
    )
    timing = units.get(unit(name, TIMING))
    reference = reference_check(units, name, matched, transfers) if cfg.reference_check else {}
    curve = cl_curve({c_l: sweep[("PGN", c_l)] for c_l in cfg.c_l}, data, cfg)
    return {
        "name": name,
        "reference": reference,
        "timing": timing,
        "pgn_mean_l2": mean_perturbation(x_pgn, data.test[0]),
        "cl_curve": curve,
        "data": data,
        "sweep": sweep,
        "matched": matched,
        "table": table,
        "ablation": ablation,
        "capacity": capacity,
        "strength": strength,
        "track": [h for h in sweep[("FGM-AT", cfg.track_eps)].result.history if "benign" in h],
        "surrogate_accuracy": accuracy(surrogate, *data.clean),
    }


class DatasetMeasurements(TypedDict):
    """What :func:`run_dataset` measures on one dataset (accuracies as fractions)."""

    name: str
    reference: dict[str, dict]  # the reference-code check (:func:`reference_check`), {} when not run
    timing: dict[str, list[float]]  # seconds per batch of the matched defences, interleaved (:func:`time_defences`)
    pgn_mean_l2: float  # the matched PGN's mean L2 perturbation on the test images
    cl_curve: list[dict]  # per swept c_L: PGN's mean L2 perturbation, benign and FGM / MIM accuracy (:func:`cl_curve`)
    data: Data
    sweep: dict[tuple, Trained]  # (defence, strength) -> the trained model
    matched: dict[str, Trained]  # per defence, the strength closest to the Baseline's benign accuracy
    table: dict[str, dict]  # per matched defence, the paper's protocol (:func:`protocol`)
    ablation: dict[str, Trained]
    capacity: dict[str, Trained]
    strength: dict[str, dict]  # Fig. 3 (:func:`attack_strength`)
    track: list[dict]  # the tracked FGM-AT's per-epoch record
    surrogate_accuracy: float


Measurements = dict[str, DatasetMeasurements]  # dataset -> its measurements


def stand_in(name: str) -> str:
    """How a dataset the paper did not use is labelled."""
    return "" if name in PAPER else f" — STAND-IN for the paper's {STAND_IN_FOR.upper()}"


def dataset_line(name: str, r: dict) -> str:
    return f"{name} ({r['data'].ds.source}){stand_in(name)}"


def samples(r: dict) -> dict[str, int]:
    d = r["data"]
    return {
        "train": len(d.train),
        "validation": len(d.val[1]),
        "test (attacks)": len(d.test[1]),
        "test (benign accuracy)": len(d.clean[1]),
        "rho (DeepFool, C&W)": len(d.rho[1]),
    }


def prepare(cfg: Config, data_dir: str | Path) -> dict[str, Data]:
    """Every configured dataset, subsampled as configured."""
    return {name: load_data(name, cfg, data_dir) for name in cfg.datasets}


def units_of(cfg: Config, data_dir) -> U.Units:
    """The stage's units over the data in ``data_dir``."""
    return U.Units("p2_pgn", plan(cfg).models, cfg, lambda: prepare(cfg, data_dir))


def run(cfg: Config, data_dir: str | Path) -> Result[Measurements]:
    """The stage: every configured dataset (:func:`run_dataset`), its models obtained through its units."""
    units = units_of(cfg, data_dir)
    results = {name: run_dataset(units, name) for name in cfg.datasets}
    merged = {f"{name} {k}": v for name, r in results.items() for k, v in samples(r).items()}
    return Result(results, "; ".join(dataset_line(name, r) for name, r in results.items()), merged)


# --------------------------------------------------------------------------------------------------
# Tables


def _label(t: Trained) -> str:
    """'Baseline', 'FGM-AT eps 0.5', 'PGN c_L 10', ..."""
    if t.value is None:
        return t.kind
    return f"{t.kind} {'c_L' if t.kind == 'PGN' else 'eps'} {t.value:g}"


def table_name(name: str) -> str:
    """File name of a dataset's results table: the paper's (Table 2 / 3) or a labelled stand-in beside Table 3."""
    return PAPER_TABLE.get(name, f"table3_{name}_standin")


def suffix(name: str, cfg: Config) -> str:
    """Figure-name suffix: none for the first dataset, ``_<name>`` for the others."""
    return "" if name == cfg.datasets[0] else f"_{name}"


def paper_key(name: str) -> str:
    """The paper's dataset whose table ``name`` is shown beside (itself, or CIFAR-10 for a stand-in)."""
    return name if name in PAPER else STAND_IN_FOR


PERCENT_METRICS = ("W-box acc", "B-box acc", "benign acc")  # fractions in the measurements, % in the tables


def results_table(r: dict) -> pd.DataFrame:
    """Table 2 / 3 in the paper's layout (defence x attack), paper vs ours vs delta; with the reference check,
    the reference-faithful PGN as one more row (beside the paper's PGN).

    Deltas are left empty when the dataset is a stand-in (different data) and for seconds (different
    hardware); the cost relative to the Baseline keeps its delta.
    """
    paper = PAPER[paper_key(r["name"])]
    same_data = r["name"] in PAPER
    clean_sec = r["matched"]["Baseline"].result.sec_per_epoch
    per_attack = {
        "FGM": (("W-box acc", "fgm_acc"), ("B-box acc", "bb_fgm")),
        "MIM": (("W-box acc", "mim_acc"), ("B-box acc", "bb_mim")),
        "DeepFool": (("mean L2", "df_mean"), ("median L2", "df_median"), ("B-box acc", "bb_df")),
        "C&W": (("mean L2", "cw_mean"), ("median L2", "cw_median"), ("B-box acc", "bb_cw")),
    }
    rows = []
    entries = [(kind, kind, t, r["table"][kind]) for kind, t in r["matched"].items()]
    faithful = r["reference"].get("all of them (reference-faithful PGN)") if r["reference"] else None
    if faithful:
        entries.append(("PGN (reference-faithful)", "PGN", faithful["trained"], faithful["protocol"]))
    for defence, kind, t, ours in entries:
        sec = t.result.sec_per_epoch
        for attack, metrics in per_attack.items():
            common = [
                ("benign acc", paper[kind]["benign"], t.benign),
                ("sec/epoch", paper[kind]["sec"], sec),
                ("cost vs Baseline", paper[kind]["sec"] / paper["Baseline"]["sec"], relative_cost(sec, clean_sec)),
            ]
            for metric, p, o in [*((m, paper[kind][k], ours[k]) for m, k in metrics), *common]:
                scale = 100 if metric in PERCENT_METRICS else 1  # accuracies in %, as everywhere else
                rows.append(
                    {
                        "defence": defence,
                        "setting": _label(t),
                        "attack": attack,
                        "metric": metric,
                        "paper": None if p is None else scale * p,
                        "ours": None if o is None else scale * o,
                    }
                )
    long = comparison(rows, ["defence", "setting", "attack"])
    if not same_data:
        long.loc[long["metric"] != "cost vs Baseline", "delta"] = float("nan")
    long.loc[long["metric"] == "sec/epoch", "delta"] = float("nan")
    return widen(long, ["defence", "setting", "attack"])


def matching_table(r: dict) -> pd.DataFrame:
    """Benign-accuracy matching: every swept model's benign accuracy and rho_cw; the one picked per defence."""
    target = r["matched"]["Baseline"].benign
    picked = {id(t) for t in r["matched"].values()}
    rows = []
    for t in r["sweep"].values():
        rows.append(
            {
                "model": _label(t),
                "defence": t.kind,
                "benign (%)": 100 * t.benign,
                "gap to Baseline (points)": 100 * (t.benign - target),
                "within 1 point": abs(t.benign - target) <= 0.01,
                "rho_cw mean": t.cw["mean_l2"],
                "rho_cw median": t.cw["median_l2"],
                "C&W success": t.cw["success_rate"],
                "sec/epoch": t.result.sec_per_epoch,
                "matched (used in the table)": id(t) in picked,
            }
        )
    return pd.DataFrame(rows)


def variants_table(models: dict, key: str) -> pd.DataFrame:
    """Ablation or capacity runs: benign accuracy and rho_cw per variant."""
    return pd.DataFrame(
        [
            {
                key: k,
                "benign (%)": 100 * t.benign,
                "rho_cw mean": t.cw["mean_l2"],
                "rho_cw median": t.cw["median_l2"],
                "C&W success": t.cw["success_rate"],
                "sec/epoch": t.result.sec_per_epoch,
            }
            for k, t in models.items()
        ]
    )


# --------------------------------------------------------------------------------------------------
# Figures

COLORS = {"Baseline": "0.3", "FGM-AT": "C0", "PGD-AT": "C1", "PGN": "C2"}


def reference_table(r: dict) -> pd.DataFrame:
    """The separating experiment: per reference choice (alone, then all together), PGN's benign accuracy and
    accuracy under FGM, MIM and AutoAttack-L2 (%), its change against our PGN (points, 95% paired interval
    over the test images) and its cost (time per epoch over ours); the matched FGM-AT's row for the gap."""
    ref = r["reference"]
    ours = ref[OURS]
    rows = []
    for variant, v in ref.items():
        row = {"difference": variant, "benign %": 100 * v["benign"]}
        row |= {f"{ATTACK_NAMES[a]} %": 100 * float(v["correct"][a].mean()) for a in REFERENCE_ATTACKS}
        if variant != "FGM-AT":
            for a in REFERENCE_ATTACKS:
                row[f"Δ {ATTACK_NAMES[a]} vs ours (pt, 95%)"] = str(
                    I.paired_difference(v["correct"][a], ours["correct"][a])
                )
            row["cost × ours"] = v["sec_per_epoch"] / ours["sec_per_epoch"]
        rows.append(row)
    rows.append(rows.pop(0))  # the matched FGM-AT last: the level PGN would have to reach
    rows[-1]["difference"] = "matched FGM-AT (the gap's other side)"
    return pd.DataFrame(rows)


ATTACK_NAMES = {"fgm": "FGM", "mim": "MIM", "autoattack": "AutoAttack-L2"}


def reference_effects(r: dict) -> dict[str, dict[str, I.Interval]]:
    """Per reference choice, the change of PGN's accuracy under each attack against our PGN (points, paired)."""
    ref = r["reference"]
    ours = ref[OURS]["correct"]
    return {
        variant: {a: I.paired_difference(v["correct"][a], ours[a]) for a in REFERENCE_ATTACKS}
        for variant, v in ref.items()
        if variant not in ("FGM-AT", OURS)
    }


def reference_finding(r: dict) -> str:
    """Which reference choices explain the gap to FGM-AT (raise PGN's accuracy under FGM and MIM by more than a
    point, the interval wholly above), which move it the other way, and which have no clear effect."""
    if not r["reference"]:
        return "The reference-code check was not run (`reference_check` false)."
    ref = r["reference"]
    ours, fgm_at = ref[OURS]["correct"], ref["FGM-AT"]["correct"]
    gap = {a: I.paired_difference(fgm_at[a], ours[a]) for a in ("fgm", "mim")}
    text = f"With our protocol, FGM-AT's accuracy minus PGN's: {gap['fgm']} points under FGM, {gap['mim']} under MIM (95%). "
    verdicts: dict[str, list[str]] = {"closes part of the gap": [], "widens it": [], "no clear effect": []}
    for variant, effects in reference_effects(r).items():
        lows, highs = [effects[a].low for a in ("fgm", "mim")], [effects[a].high for a in ("fgm", "mim")]
        if min(lows) > 1:
            verdicts["closes part of the gap"].append(f"{variant} (FGM {effects['fgm']}, MIM {effects['mim']})")
        elif max(highs) < -1:
            verdicts["widens it"].append(f"{variant} (FGM {effects['fgm']}, MIM {effects['mim']})")
        else:
            verdicts["no clear effect"].append(variant)
    text += " ".join(f"{k.capitalize()}: {'; '.join(v)}." for k, v in verdicts.items() if v)
    faithful = ref.get("all of them (reference-faithful PGN)")
    if faithful:
        left = {a: I.paired_difference(fgm_at[a], faithful["correct"][a]) for a in ("fgm", "mim")}
        text += (
            f" With all of them (the reference-faithful PGN), FGM-AT's accuracy minus PGN's: {left['fgm']} under FGM, "
            f"{left['mim']} under MIM (each variant is one training seed; the intervals cover the test images only)."
        )
    return text


def _radii(norms: list[torch.Tensor], points: int = 60) -> list[float]:
    finite = torch.cat([n[torch.isfinite(n)] for n in norms]) if norms else torch.zeros(1)
    top = float(finite.max()) if len(finite) else 1.0
    return [top * 1.05 * i / (points - 1) for i in range(points)]


def _cw_curves(ax, models: dict[str, Trained], colors: dict | None = None) -> None:
    radii = _radii([t.cw_norms for t in models.values()])
    for i, (label, t) in enumerate(models.items()):
        ax.plot(
            radii,
            [100 * a for a in accuracy_vs_norm(t.cw_norms, radii)],
            color=(colors or {}).get(label, f"C{i}"),
            label=f"{label} (benign {100 * t.benign:.1f}%, rho {t.cw['mean_l2']:.3f})",
        )
    ax.set(xlabel="L2 budget of C&W", ylabel="accuracy (%)")
    legend_outside(ax, 6.5)


def figure2(r: dict, cfg: Config, subtitle: str) -> plt.Figure:
    """Fig. 2: FGM-AT's trade-off (C&W accuracy vs L2 for each eps) and its over-fitting during training."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    _cw_curves(
        left,
        {
            "Baseline": r["sweep"][("Baseline", None)],
            **{f"FGM-AT eps {e:g}": r["sweep"][("FGM-AT", e)] for e in cfg.at_eps},
        },
    )
    left.set_title("FGM-AT: accuracy under C&W vs L2 budget", fontsize=9)
    track = r["track"]
    epochs = [h["epoch"] for h in track]
    right.plot(epochs, [100 * h["benign"] for h in track], marker="o", color="C0", label="benign accuracy (%)")
    right.set(xlabel="epoch", ylabel="benign accuracy (%)")
    twin = right.twinx()
    twin.plot(epochs, [h["rho_cw"] for h in track], marker="s", color="C3", label="rho_cw")
    twin.set_ylabel("rho_cw (mean L2 of successful C&W)")
    right.set_title(f"FGM-AT eps {cfg.track_eps:g} during training ({cfg.track_n} test images)", fontsize=9)
    right.legend(loc="lower left", fontsize=7), twin.legend(loc="lower right", fontsize=7)
    fig.suptitle(f"Fig. 2 — FGM adversarial training trade-off ({subtitle})", fontsize=10)
    return fig


def figure3(r: dict, cfg: Config, subtitle: str) -> plt.Figure:
    """Fig. 3: PGN vs FGM vs PGD attacking fixed FGM-AT and PGD-AT classifiers: accuracy vs mean L2 (the interval
    over the test images as error bars)."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for ax, (kind, s) in zip(axes, r["strength"].items()):
        for attack, marker in (("FGM", "o"), ("PGD", "s"), ("PGN", "^")):
            pts = sorted(s[attack], key=lambda p: p["mean_l2"])
            accuracy_curve(
                ax,
                [p["mean_l2"] for p in pts],
                [p["acc"] for p in pts],
                samples(r)["test (attacks)"],
                marker=marker,
                label=attack if attack != "PGN" else "PGN (generator vs fixed classifier)",
            )
        ax.set(xlabel="mean L2 of the perturbation", title=f"classifier: {kind} eps {cfg.fig3_eps:g}")
    legend_outside(axes[-1], 7, ERROR_BARS)
    axes[0].set_ylabel("accuracy (%)")
    fig.suptitle(f"Fig. 3 — attack strength ({subtitle})", fontsize=10)
    return fig


def figure4(r: dict, cfg: Config, subtitle: str) -> plt.Figure:
    """Fig. 4: C&W accuracy vs L2 at matched benign accuracies: each PGN model beside the FGM-AT and PGD-AT models closest in benign accuracy."""
    pgn_models = [t for k, t in r["sweep"].items() if k[0] == "PGN"]
    fig, axes = plt.subplots(1, len(pgn_models), figsize=(5 * len(pgn_models), 4), squeeze=False)
    for ax, p in zip(axes[0], pgn_models):
        group = {_label(p): p}
        for kind in ("FGM-AT", "PGD-AT"):
            key, _ = closest_benign({k: t.benign for k, t in r["sweep"].items() if k[0] == kind}, p.benign)
            group[_label(r["sweep"][key])] = r["sweep"][key]
        _cw_curves(ax, group, {_label(t): COLORS[t.kind] for t in group.values()})
        ax.set_title(f"matched to PGN benign {100 * p.benign:.1f}%", fontsize=9)
    fig.suptitle(f"Fig. 4 — accuracy under C&W at matched benign accuracy ({subtitle})", fontsize=10)
    return fig


def figure5(r: dict, cfg: Config, subtitle: str) -> plt.Figure:
    """Fig. 5: robustness curves (benign accuracy vs rho_cw per method, swept hyper-parameter) and, when the
    profile runs it, PGN's capacity panel (otherwise one panel: no plot for an experiment that did not run)."""
    fig, axes = plt.subplots(1, 2 if cfg.capacity else 1, figsize=(11 if cfg.capacity else 6.4, 4), squeeze=False)
    left = axes[0][0]
    for kind in DEFENCES:
        pts = sorted((t for k, t in r["sweep"].items() if k[0] == kind), key=lambda t: t.cw["mean_l2"])
        left.plot(
            [t.cw["mean_l2"] for t in pts], [100 * t.benign for t in pts], marker="o", color=COLORS[kind], label=kind
        )
        for t in pts:
            if t.value is not None:
                left.annotate(
                    f"{t.value:g}",
                    (t.cw["mean_l2"], 100 * t.benign),
                    fontsize=6,
                    xytext=(3, 3),
                    textcoords="offset points",
                )
    left.set(
        xlabel="rho_cw (mean L2 of successful C&W)",
        ylabel="benign accuracy (%)",
        title="robustness curves (eps / c_L annotated)",
    )
    left.legend(fontsize=7, loc="best")
    if cfg.capacity:
        right = axes[0][1]
        caps = sorted(r["capacity"].items())
        right.plot(
            [t.cw["mean_l2"] for _, t in caps], [100 * t.benign for _, t in caps], marker="o", color=COLORS["PGN"]
        )
        for w, t in caps:
            right.annotate(
                f"width x{w / cfg.width:g}",
                (t.cw["mean_l2"], 100 * t.benign),
                fontsize=7,
                xytext=(3, 3),
                textcoords="offset points",
            )
        right.set(
            xlabel="rho_cw",
            ylabel="benign accuracy (%)",
            title=f"PGN c_L {cfg.main_c_l:g} at several classifier widths",
        )
    fig.suptitle(f"Fig. 5 — robustness curves; the outer curve wins ({subtitle})", fontsize=10)
    return fig


def figure8(r: dict, cfg: Config, subtitle: str) -> plt.Figure:
    """Fig. 8: PGN with each generator input removed: accuracy under C&W vs L2 budget."""
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    _cw_curves(ax, r["ablation"])
    what = (
        f"ablation of PGN's inputs, c_L {cfg.main_c_l:g}"
        if cfg.ablation
        else "ablation: not run in this profile (PGN with all inputs only)"
    )
    ax.set_title(f"Fig. 8 — {what} ({subtitle})", fontsize=9)
    return fig


def example_grid(r: dict, cfg: Config, subtitle: str) -> plt.Figure:
    """PGN images at several perturbation powers (generators fully trained against the fixed PGD-AT classifier; the paper's Table 4)."""
    kind = "PGD-AT"
    model = r["sweep"][(kind, cfg.fig3_eps)].model
    x, y = (t[: cfg.n_examples] for t in r["data"].test)
    rows = {"original": (x, predict(model, x))}
    for c_l, g in sorted(r["strength"][kind]["generators"].items(), reverse=True):
        x_adv = adversarial_examples(model, x, y, pgn_attack, generator=g, reduction=cfg.grad_reduction)
        rows[f"c_L {c_l:g}, L2 {mean_perturbation(x_adv, x):.2f}"] = (x_adv, predict(model, x_adv))
    fig, axes = plt.subplots(len(rows), len(x), figsize=(1.4 * len(x), 1.5 * len(rows)), squeeze=False)
    for i, (name, (imgs, pred)) in enumerate(rows.items()):
        for j in range(len(x)):
            ax = axes[i][j]
            ax.imshow(imgs[j].permute(1, 2, 0).squeeze(-1).numpy(), cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([]), ax.set_yticks([])
            ax.set_title(f"pred {int(pred[j])}" + (" ✓" if pred[j] == y[j] else ""), fontsize=6)
            if j == 0:
                ax.set_ylabel(name, fontsize=6)
    fig.suptitle(f"PGN examples at several perturbation powers vs {kind} eps {cfg.fig3_eps:g} ({subtitle})", fontsize=8)
    return fig


# --------------------------------------------------------------------------------------------------
# Claims and metrics


def gradient_lead(ablation: dict[str, Trained], min_drop: float) -> I.Interval:
    """The paper's ablation claim (Fig. 8): removing the gradient input lowers rho_cw the most, by at least
    ``min_drop`` x the full PGN's. The least of its leads on the same C&W images (each with its paired bootstrap
    interval): over removing each other input (rho_cw without that input minus without the gradient), and over
    ``min_drop`` x the full rho_cw ((1 - min_drop) x the full PGN's minus without the gradient); held above 0."""
    no_gradient = successful_norms(ablation["no gradient"])
    others = [t for k, t in ablation.items() if k not in ("all inputs", "no gradient")]
    leads = [I.mean_difference(successful_norms(t), no_gradient) for t in others]
    leads.append(I.mean_difference((1 - min_drop) * successful_norms(ablation["all inputs"]), no_gradient))
    return I.lowest(leads)


def converged(t: Trained) -> C.Gate:
    return C.converged_history(_label(t), t.result.history)


def matched_gates(r: dict) -> list[C.Gate]:
    """The matched table's preconditions: every defence converged, the Baseline accurate enough (a
    stand-in dataset: at least 85%), each rival within 1 point of the Baseline's benign accuracy, and
    PGN's perturbations at the end of training comparable to the matched FGM-AT budget (mean L2
    within 2x of its eps)."""
    m = r["matched"]
    name = r["name"]
    gates = [converged(t) for t in m.values()]
    gates.append(C.clean_accuracy("Baseline", 100 * m["Baseline"].benign, None, name, stand_in=True))
    gates += [
        C.at_most(
            f"{k} benign accuracy minus the Baseline's (points, absolute)",
            abs(100 * (t.benign - m["Baseline"].benign)),
            1.0,
        )
        for k, t in m.items()
        if k != "Baseline"
    ]
    ratio = r["pgn_mean_l2"] / m["FGM-AT"].value
    gates.append(perturbation_ratio(f"the matched FGM-AT eps {m['FGM-AT'].value:g}", ratio))
    return gates


def perturbation_ratio(baseline: str, ratio: float, setting: str = "") -> C.Gate:
    """PGN's mechanism ran at a comparable size: its mean L2 perturbation within 2x, either way, of the
    single-step baseline's (``ratio`` = PGN's over the baseline's; compare uses it too)."""
    return C.Gate(
        f"PGN's mean L2 perturbation over {baseline} ({setting + '; ' if setting else ''}within 2x either way)",
        ratio,
        C.PERTURBATION_RATIO,
        bool(1 / C.PERTURBATION_RATIO <= ratio <= C.PERTURBATION_RATIO),
    )


def successful_norms(t: Trained) -> np.ndarray:
    """Per rho-set image, ``t``'s C&W L2 norm where the attack succeeded on a correctly classified image, else
    NaN: the images rho_cw averages."""
    norms = t.cw_norms.double().numpy().copy()
    norms[(norms <= 0) | ~np.isfinite(norms)] = np.nan
    return norms


def rho_lead(pgn: Trained, rival: Trained) -> I.Interval:
    """PGN's rho_cw minus a rival's on the same C&W images, with its paired bootstrap interval."""
    return I.mean_difference(successful_norms(pgn), successful_norms(rival))


def outer_pairs(r: dict) -> list[tuple[str, Trained, Trained]]:
    """Fig. 4/5's outer robustness curve: each PGN level (c_L) with each rival (FGM-AT, PGD-AT) closest to it in
    benign accuracy."""
    sweep = r["sweep"]
    return [
        (
            f"c_L {k[1]:g}",
            p,
            sweep[closest_benign({kk: t.benign for kk, t in sweep.items() if kk[0] == kind}, p.benign)[0]],
        )
        for k, p in sweep.items()
        if k[0] == "PGN"
        for kind in ("FGM-AT", "PGD-AT")
    ]


def outer_curve(r: dict) -> tuple[list[str], list[Trained]]:
    """The PGN levels whose rho_cw falls below a rival's closest in benign accuracy (point values), and every
    model compared (for their gates)."""
    pairs = outer_pairs(r)
    behind = list(dict.fromkeys(level for level, p, t in pairs if p.cw["mean_l2"] < t.cw["mean_l2"]))
    compared: list[Trained] = []
    for _, *models in pairs:
        compared += [t for t in models if all(t is not c for c in compared)]
    return behind, compared


def pgn_minus_pgd(r: dict) -> list[I.Interval]:
    """Fig. 3: for each PGN attacker whose mean L2 falls inside PGD's range, its accuracy minus PGD's at the same
    mean L2 (points; PGD's per-image correctness interpolated linearly between its two neighbouring budgets,
    the mean L2 taken as measured), with a paired bootstrap interval over the test images."""
    return [
        I.paired_difference(pt["correct"], pgd)
        for res in r["strength"].values()
        for pt in res["PGN"]
        if (pgd := _interpolate(res["PGD"], pt["mean_l2"], "correct")) is not None
    ]


def weaker_than_pgd(r: dict) -> tuple[int, int]:
    """Fig. 3: of the PGN attackers whose mean L2 falls inside PGD's range, how many reach an accuracy
    at most PGD's at the same mean L2; and how many are comparable."""
    leads = pgn_minus_pgd(r)
    return sum(d.estimate <= 0 for d in leads), len(leads)


def white_minus_black(r: dict) -> dict[tuple[str, str], I.Interval]:
    """Per matched defence and attack (FGM, MIM): its white-box accuracy minus its accuracy on the transferred
    black-box examples (points), paired on the same test images."""
    tab = r["table"]
    return {
        (k, a): I.paired_difference(tab[k]["correct"][a], tab[k]["bb_correct"][a])
        for k in DEFENCES
        for a in ("fgm", "mim")
    }


def white_box_above_black_box(r: dict) -> list[str]:
    """Defences more accurate (by over a point, point values) under a white-box attack than under its black-box transfer."""
    return list(dict.fromkeys(k for (k, _), d in white_minus_black(r).items() if d.estimate > 1.0))


def pgn_lead(r: dict, key: str, scale: float = 1.0) -> float:
    """PGN's ``key`` (rho_cw or an accuracy) minus the higher of FGM-AT's and PGD-AT's, in the matched table."""
    tab = r["table"]
    return scale * (tab["PGN"][key] - max(tab["FGM-AT"][key], tab["PGD-AT"][key]))


def relative_costs(r: dict) -> dict[str, float]:
    """Seconds per epoch of each matched defence relative to the Baseline's (clean training)."""
    sec = {k: t.result.sec_per_epoch for k, t in r["matched"].items()}
    return {k: relative_cost(v, sec["Baseline"]) for k, v in sec.items()}


def ablation_claim(label: str, cfg: Config) -> C.Spec:
    """Fig. 8: removing the gradient input lowers rho_cw the most (or: not run in this profile)."""
    claim = (
        f"{label}: the gradient input matters most (ablation at c_L {cfg.main_c_l:g}: the largest rho_cw drop, at least "
        f"{100 * cfg.ablation_min_drop:g}% of rho_cw)"
    )
    if not cfg.ablation:
        return C.not_run(claim, "no gradient", "the ablation is not in this profile")

    def drops(r: dict) -> dict[str, float]:
        full = r["ablation"]["all inputs"].cw["mean_l2"]
        return {k: full - t.cw["mean_l2"] for k, t in r["ablation"].items() if k != "all inputs"}

    return C.Spec(
        claim,
        quantity=lambda r: gradient_lead(r["ablation"], cfg.ablation_min_drop).estimate,
        rule=C.above(0.0),
        interval=lambda r: gradient_lead(r["ablation"], cfg.ablation_min_drop),
        gates=lambda r: [converged(t) for t in r["ablation"].values()],
        paper="no gradient",
        shown=lambda r: ", ".join(f"{k} {v:+.3f}" for k, v in drops(r).items()),
    )


def finite_rho(r: dict) -> C.Gate:
    """rho_cw is a mean over successful C&W attacks: each rival needs at least one."""
    rivals = DEFENCES[1:]
    finite = sum(not math.isnan(r["table"][k]["cw_mean"]) for k in rivals)
    return C.at_least("defences whose C&W attack succeeded at least once (finite rho_cw)", finite, len(rivals))


def matched_claims(label: str) -> list[C.Spec]:
    """Tables 2/3 at matched benign accuracy: PGN's rho_cw and MIM accuracy the highest."""
    rivals = DEFENCES[1:]
    return [
        C.Spec(
            f"{label}: at matched benign accuracy PGN has the highest rho_cw (mean C&W L2)",
            quantity=lambda r: pgn_lead(r, "cw_mean"),
            rule=C.not_below(0.0),
            gates=lambda r: [*matched_gates(r), finite_rho(r)],
            interval=lambda r: I.lowest([rho_lead(r["matched"]["PGN"], r["matched"][k]) for k in ("FGM-AT", "PGD-AT")]),
            paper="PGN highest",
            shown=lambda r: ", ".join(f"{k} {r['table'][k]['cw_mean']:.3f}" for k in rivals),
        ),
        C.Spec(
            f"{label}: at matched benign accuracy PGN has the highest MIM accuracy (%; PGN minus the better rival, by "
            "more than 1 point)",
            quantity=lambda r: pgn_lead(r, "mim_acc", 100.0),
            rule=C.above(1.0),
            gates=matched_gates,
            interval=lambda r: I.lowest(
                [
                    I.paired_difference(r["table"]["PGN"]["correct"]["mim"], r["table"][k]["correct"]["mim"])
                    for k in ("FGM-AT", "PGD-AT")
                ]
            ),
            paper="PGN highest",
            shown=lambda r: ", ".join(f"{k} {100 * r['table'][k]['mim_acc']:.1f}" for k in rivals),
        ),
    ]


def cost_claim(label: str) -> C.Spec:
    """Table 3's cost: PGN's training between FGM-AT's and PGD-AT's: the lower of the ratios PGN / FGM-AT and
    PGD-AT / PGN (seconds per batch, each the median of the per-round ratios of :func:`time_defences`) above 1;
    its interval is the lower of the two ratios' intervals (held iff both lie above 1)."""
    pairs = (("PGN", "FGM-AT"), ("PGD-AT", "PGN"))

    def seconds(r: dict, k: str) -> list[float]:
        return r["timing"][k]

    def lower(r: dict) -> I.Interval:
        a, b = (I.paired_ratio(seconds(r, n), seconds(r, d)) for n, d in pairs)
        return I.Interval(min(a.estimate, b.estimate), min(a.low, b.low), min(a.high, b.high), a.method, 0)

    return C.Spec(
        f"{label}: PGN costs between FGM-AT and PGD-AT per training batch (the lower of PGN / FGM-AT and "
        "PGD-AT / PGN, interleaved, above 1; per epoch relative to clean training shown)",
        quantity=lambda r: lower(r).estimate,
        rule=C.above(1.0),
        gates=lambda r: [g for n, d in pairs for g in C.steady(f"{n} / {d}", seconds(r, n), seconds(r, d))],
        paper="3.04, 6.30, 21.2",
        shown=lambda r: ", ".join(f"{relative_costs(r)[k]:.2f}" for k in ("FGM-AT", "PGN", "PGD-AT")),
        interval=lower,
    )


def claim_specs(label: str, cfg: Config) -> list[C.Spec]:
    """The paper's claims (and ours) on one dataset as data, decided on the result of :func:`run_dataset`."""
    levels = len(dict.fromkeys(cfg.c_l))
    return [
        *matched_claims(label),
        C.Spec(
            f"{label}: on the outer robustness curve (Fig. 4/5) PGN's rho_cw is at least its rivals' closest in benign "
            "accuracy (PGN minus the rival, the least over levels and rivals; levels where it is)",
            quantity=lambda r: min(p.cw["mean_l2"] - t.cw["mean_l2"] for _, p, t in outer_pairs(r)),
            rule=C.not_below(0.0),
            gates=lambda r: [converged(t) for t in outer_curve(r)[1]],
            interval=lambda r: I.lowest([rho_lead(p, t) for _, p, t in outer_pairs(r)]),
            paper=f"{levels} of {levels}",
            shown=lambda r: f"{levels - len(outer_curve(r)[0])} of {levels}",
        ),
        cost_claim(label),
        ablation_claim(label, cfg),
        C.Spec(
            f"{label}: PGN attackers reach lower accuracy than PGD at the same mean L2 (Fig. 3; PGN's accuracy minus "
            "PGD's, points, the most over comparable points; comparable points where they do)",
            quantity=lambda r: max((d.estimate for d in pgn_minus_pgd(r)), default=None),
            rule=C.not_above(0.0),
            interval=lambda r: I.highest(leads) if (leads := pgn_minus_pgd(r)) else None,
            gates=lambda r: [
                C.at_least("comparable points (PGN's mean L2 inside PGD's range)", weaker_than_pgd(r)[1], 1),
                *(converged(r["sweep"][(kind, cfg.fig3_eps)]) for kind in r["strength"]),
            ],
            paper="all",
            shown=lambda r: "{} of {}".format(*weaker_than_pgd(r)),
        ),
        C.Spec(
            f"{label}, ours: no defence is more accurate under white-box attack than under black-box (white-box minus "
            "black-box accuracy, points, the most over defences and attacks, at most 1; defences flagged)",
            quantity=lambda r: max(d.estimate for d in white_minus_black(r).values()),
            rule=C.not_above(1.0),
            interval=lambda r: I.highest(list(white_minus_black(r).values())),
            gates=lambda r: [converged(t) for t in r["matched"].values()],
            shown=lambda r: C.join(white_box_above_black_box(r)),
        ),
    ]


def claims(r: dict, cfg: Config) -> list[C.Claim]:
    """The claims of :func:`claim_specs`, decided on one dataset's run, each with its gates."""
    return C.evaluate(claim_specs(r["name"], cfg), r)


def _interpolate(points: list[dict], at: float, key: str):
    """An attack curve's ``key`` (e.g. its per-image correctness) at mean L2 ``at``: linear between the two
    neighbouring points; None outside the measured range."""
    pts = sorted(points, key=lambda p: p["mean_l2"])
    for a, b in zip(pts, pts[1:]):
        if a["mean_l2"] <= at <= b["mean_l2"]:
            w = (at - a["mean_l2"]) / max(b["mean_l2"] - a["mean_l2"], 1e-12)
            return a[key] + w * (b[key] - a[key])
    return None


def summary_metrics(r: dict) -> dict:
    """The headline numbers of one dataset for metrics.json (accuracies as fractions, seconds on this machine)."""
    return {
        "matched": {
            k: {"setting": _label(t), "benign": t.benign, **r["table"][k], "sec_per_epoch": t.result.sec_per_epoch}
            for k, t in r["matched"].items()
        },
        "sweep": {
            _label(t): {"benign": t.benign, "rho_cw": t.cw["mean_l2"], "sec_per_epoch": t.result.sec_per_epoch}
            for t in r["sweep"].values()
        },
        "ablation": {k: {"benign": t.benign, "rho_cw": t.cw["mean_l2"]} for k, t in r["ablation"].items()},
        "capacity": {f"{w:g}": {"benign": t.benign, "rho_cw": t.cw["mean_l2"]} for w, t in r["capacity"].items()},
        "attack_strength": {
            k: {a: [{f: p[f] for f in ("param", "mean_l2", "acc")} for p in v[a]] for a in ("FGM", "PGD", "PGN")}
            for k, v in r["strength"].items()
        },
        "surrogate_accuracy": r["surrogate_accuracy"],
    }


def _headline_metrics(r: dict) -> dict[str, float]:
    """metrics.json, one dataset: the numbers the claims rest on (accuracy in %, rho_cw, cost ratio)."""
    m, tab = r["matched"], r["table"]
    out = {"benign_acc_baseline": round(100 * m["Baseline"].benign, 2)}
    for k in DEFENCES[1:]:
        key = k.lower().replace("-", "_")
        out[f"rho_cw_{key}"] = round(tab[k]["cw_mean"], 4)
        out[f"mim_acc_{key}"] = round(100 * tab[k]["mim_acc"], 2)
    out["epoch_time_pgn_over_baseline"] = round(
        relative_cost(m["PGN"].result.sec_per_epoch, m["Baseline"].result.sec_per_epoch), 3
    )
    return out


def headline_metrics(results: dict[str, dict]) -> dict[str, float]:
    """metrics.json over every dataset (keys prefixed with the dataset when there are several)."""
    return {
        (f"{name}_{k}" if len(results) > 1 else k): v
        for name, r in results.items()
        for k, v in _headline_metrics(r).items()
    }


def plan(cfg: Config) -> P.StagePlan:
    """The stage's units under ``cfg`` (what it trains, what each builds on, how) and their cost (:mod:`lib.plan`)."""
    names = list(cfg.datasets)
    plan = P.StagePlan("p2_pgn", cfg.profile, P.train_size(names[0], cfg.n_train, cfg.n_val))
    both = 1 + (cfg.clean_weight > 0)
    pgn = 1 + 1 + both  # gradient image, the generator's ascent, the classifier

    def defence(name: str, kind: str, value: float | None, desc: str, **kw):
        def train_unit(units: U.Units) -> Trained:
            data = units.data[name]
            hook = Tracker(data, cfg) if kind == "FGM-AT" and value == cfg.track_eps else None
            return fit(kind, value, data, cfg, on_epoch_end=hook, desc=desc, **kw)

        return train_unit

    def surrogate(name: str):
        return lambda u: train_defence("Baseline", None, u.data[name], cfg, seed=cfg.seed + 100, desc=SURROGATE)[0]

    def add(name: str, desc: str, passes: float, train_unit, deps=(), w=None, e=None, examples=None, exclusive=False):
        model = P.Model("convpool_cnn", P.shape_of(name), P.classes_of(name), (("width", w or cfg.width),))
        n = examples or P.train_size(name, cfg.n_train, cfg.n_val)
        deps = tuple(unit(name, d) for d in deps)
        plan.add(unit(name, desc), model, e or cfg.epochs, n, passes, cfg.batch_size, train_unit, deps, exclusive)

    for name in names:
        n, width, epochs = P.train_size(name, cfg.n_train, cfg.n_val), cfg.width, cfg.epochs
        add(name, BASELINE, 1, defence(name, "Baseline", None, BASELINE))
        add(name, SURROGATE, 1, surrogate(name))
        sweep = [BASELINE]
        for kind, values, passes, e in (
            ("FGM-AT", cfg.at_eps, 1 + both, epochs),
            ("PGD-AT", cfg.pgd_eps, cfg.pgd_train_steps + both, cfg.epochs_of("PGD-AT")),
            ("PGN", cfg.c_l, pgn, epochs),
        ):
            for v in values:
                add(name, swept(kind, v), passes, defence(name, kind, v, swept(kind, v)), e=e)
                sweep.append(swept(kind, v))
        for drop in INPUTS if cfg.ablation else ():
            desc = f"PGN ablation: no {drop}"
            add(name, desc, pgn, defence(name, "PGN", cfg.main_c_l, desc, use=tuple(i for i in INPUTS if i != drop)))
        for m in cfg.capacity:
            desc = f"PGN width x{m:g}"
            add(name, desc, pgn, defence(name, "PGN", cfg.main_c_l, desc, width=cfg.width * m), w=width * m)
        if cfg.reference_check:  # the matched PGN retrained with the reference's choices (matched: from the sweep)
            for opts in list(reference_variants(cfg, math.ceil(n / cfg.batch_size)).values())[1:]:
                add(
                    name, reference_desc(opts), pgn, lambda u, o=opts, nm=name: train_reference_variant(u, nm, o), sweep
                )
        timed = (1 + both, pgn, cfg.pgd_train_steps + both)  # FGM-AT, PGN, PGD-AT: a warm-up + the rounds each
        add(
            name,
            TIMING,
            sum(timed) / len(timed),
            lambda u, nm=name: time_defences(matched_of(u, nm), u.data[nm], cfg),
            sweep,
            e=1,
            examples=len(timed) * (1 + cfg.timing_rounds) * cfg.timing_batches * cfg.batch_size,
            exclusive=True,
        )
        for kind in ("FGM-AT", "PGD-AT"):  # Fig. 3: PGN attackers against two fixed classifiers (G alone learns)
            for c_l in cfg.attack_c_l:
                add(
                    name,
                    attacker(kind, c_l, cfg),
                    2,
                    lambda u, nm=name, k=kind, c=c_l: train_attack_generator(u, nm, k, c),
                    (swept(kind, cfg.fig3_eps),),
                    e=cfg.attack_epochs,
                )
    return plan
