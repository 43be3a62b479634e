"""p1 — Jung: K convolutional generators replace PGD's inner maximisation.

An adversarial sample is g_w(x) = min(max(phi_w(x), x - s), x + s), clipped to [0, 1]. Every
batch the classifier descends CE(f(g_w(x)), y) and the generators ascend the same loss,
concurrently (one backward pass, no inner iterations). The baseline "min-max" is PGD-L2
adversarial training (Madry et al.). Both start from the same clean pre-trained ResNet-20.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass, field
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
from lib.augment import random_hflip
from lib.cache import cached
from lib.errors import require
from lib.evaluate import accuracy, accuracy_vs_eps, adversarial_examples, correct_vs_eps, relative_cost
from lib.methods.conv_generator_ensemble import ASSIGNMENTS, EnsembleSource, GeneratorEnsemble
from lib.report import ERROR_BARS, accuracy_curve, comparison, evaluation, legend_outside
from lib.runtime import device, seed_everything
from lib.stages import Result
from lib.timing import interleaved, per_batch
from lib.train import (
    AttackSource,
    TrainConfig,
    TrainResult,
    Validation,
    train,
    validation_hook,
)

PAPER_SEC_PER_EPOCH = {"proposed": 105.0, "min-max": 551.0}  # Table 1: CIFAR-10, 8 epochs, "the same computer"
MODELS = ("base", "min-max", "proposed")


@dataclass
class Config:
    """Parameters of the p1 stage (see profiles/<stage>.yaml; defaults = the paper's setting)."""

    profile: str = "smoke"
    dataset: str = "cifar10"
    n_train: int | None = None
    n_test: int | None = None
    n_val: int = 5000  # validation images held out of the training split (the convergence gates read them)
    model: str = "resnet20"
    model_options: dict = field(default_factory=dict)  # e.g. a narrower model's width (the cpu profile's trade)
    base_epochs: int = 100  # the paper starts from "a pre-trained ResNet-20"; we pre-train it ourselves
    patience: int | None = (
        None  # early stopping of the base and both fine-tunings on the validation split (None: every epoch)
    )
    base_lr: float = 0.05
    weight_decay: float = 5e-4
    k: int = 32
    s: float = 0.2
    assignment: str = "split"  # split: each sample to one generator; all: every generator sees the batch
    gen_depth: int = 3
    gen_width: int = 16
    epochs: int = 8
    lr: float = 0.005  # SGD, classifier and generators alike
    momentum: float = 0.9
    batch_size: int = 128
    flip: bool = True
    clean_weight: float = 0.0  # the paper's objective uses g_w(x) only
    minmax_eps: float = 0.05
    minmax_steps: int = 40
    minmax_step_size: float = 0.005
    minmax_random_start: bool = True
    eval_eps: list[float] = field(default_factory=lambda: [0.0, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5])
    eval_steps: int = 50
    autoattack: str = "standard"  # AutoAttack-L2 beside PGD-L2: "standard" or "apgd-ce+t" (its first two attacks)
    autoattack_iterations: int = 100
    autoattack_eps: list[float] | None = None  # the L2 eps AutoAttack runs at (None = every eval eps above 0)
    autoattack_targets: int = (
        9  # APGD-T's (and FAB-T's) target classes: the reference's 9; fewer is a labelled reduction
    )
    linf_eps: list[float] = field(default_factory=lambda: [2 / 255, 4 / 255, 8 / 255])
    timing_batches: int = 20
    timing_repeats: int = (
        5  # Table 1's timing: timed repeats per method (interleaved, in one process); the median is reported
    )
    timing_k: int = 32
    timing_minmax_steps: int = 40
    n_examples: int = 6
    seed: int = 0
    max_batches: int | None = None  # cap batches per epoch (tests only)

    def validate(self) -> Config:
        D.check_name(self.dataset)
        require(self.model in M.BUILDERS, f"unknown model '{self.model}'")
        require(self.assignment in ASSIGNMENTS, f"assignment must be one of {ASSIGNMENTS}, got '{self.assignment}'")
        require(0 < self.s <= 1, f"s must be in (0, 1], got {self.s}")
        for name in (
            "k",
            "gen_depth",
            "gen_width",
            "epochs",
            "base_epochs",
            "batch_size",
            "minmax_steps",
            "eval_steps",
            "timing_batches",
            "timing_repeats",
            "timing_k",
            "timing_minmax_steps",
            "n_examples",
        ):
            require(int(getattr(self, name)) >= 1, f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("lr", "base_lr", "minmax_eps", "minmax_step_size"):
            require(getattr(self, name) > 0, f"{name} must be > 0, got {getattr(self, name)}")
        require(all(e >= 0 for e in [*self.eval_eps, *self.linf_eps]), "eval_eps and linf_eps must be >= 0")
        require(0 <= self.clean_weight < 1, f"clean_weight must be in [0, 1), got {self.clean_weight}")
        require(self.n_train is None or self.n_train > 0, "n_train must be positive")
        require(self.n_test is None or self.n_test > 0, "n_test must be positive")
        S.check_autoattack_settings(
            self.autoattack,
            self.autoattack_iterations,
            self.autoattack_eps,
            [e for e in self.eval_eps if e > 0],
            self.autoattack_targets,
        )
        require(int(self.n_val) >= 1, f"n_val must be >= 1, got {self.n_val}")
        require(self.patience is None or int(self.patience) >= 1, f"patience must be >= 1 or null, got {self.patience}")
        return self

    @property
    def aa_eps(self) -> list:
        """The L2 eps AutoAttack runs at."""
        return S.autoattack_budgets(self.autoattack_eps, [e for e in self.eval_eps if e > 0])


def build_ensemble(channels: int, k: int, cfg: Config, assignment: str | None = None) -> GeneratorEnsemble:
    """The K generators, initial weights depending only on the seed."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed + 7)
        return GeneratorEnsemble(channels, k, cfg.s, cfg.gen_depth, cfg.gen_width, assignment or cfg.assignment).to(
            device()
        )


def load_data(cfg: Config, data_dir) -> tuple[D.Dataset, D.Split, D.Split, D.Split]:
    """The dataset and the (sub)sampled train, validation (held out of train) and test splits the run uses."""
    ds = D.load(cfg.dataset, data_dir)
    train_split, val_split = D.hold_out(
        D.subset(ds.train, cfg.n_train, cfg.seed, f"{ds.name} train"), cfg.n_val, cfg.seed, f"{ds.name} train"
    )
    return ds, train_split, val_split, D.subset(ds.test, cfg.n_test, cfg.seed + 1, f"{ds.name} test")


def _train_config(cfg: Config, epochs: int, lr: float, seed: int, clean_weight: float) -> TrainConfig:
    return TrainConfig(
        epochs=epochs,
        batch_size=cfg.batch_size,
        lr=lr,
        optimizer="sgd",
        momentum=cfg.momentum,
        weight_decay=cfg.weight_decay,
        clean_weight=clean_weight,
        seed=seed,
        augment=random_hflip if cfg.flip else None,
    )


def minmax_source(cfg: Config, steps: int | None = None) -> AttackSource:
    """The baseline's PGD-L2 inner maximisation (eps 0.05, 40 iterations of 0.005 in the paper)."""
    return AttackSource(
        A.pgd,
        eps=cfg.minmax_eps,
        steps=steps or cfg.minmax_steps,
        step_size=cfg.minmax_step_size,
        norm="l2",
        random_start=cfg.minmax_random_start,
    )


def pretrain(
    ds: D.Dataset,
    train_split: D.Split,
    cfg: Config,
    seed: int,
    desc: str = "base",
    validation: Validation | None = None,
) -> TrainResult:
    """A clean classifier (the common base; with another seed, the black-box surrogate), its
    validation accuracy per epoch in the history when ``validation`` is given."""
    model = M.build(cfg.model, ds.shape, ds.num_classes, seed=seed, **cfg.model_options).to(device())
    loader = D.loader(train_split, cfg.batch_size, shuffle=True, seed=seed, with_index=True)
    return train(
        model,
        loader,
        _train_config(cfg, cfg.base_epochs, cfg.base_lr, seed, 0.0),
        on_epoch_end=validation,
        max_batches=cfg.max_batches,
        desc=desc,
        cache_as=desc,
    )


def fine_tune(
    base: nn.Module,
    train_split: D.Split,
    cfg: Config,
    method: str,
    epochs: int | None = None,
    max_batches: int | None = None,
    k: int | None = None,
    minmax_steps: int | None = None,
    assignment: str | None = None,
    cache_as: str | None = None,
    validation: Validation | None = None,
) -> tuple[TrainResult, AttackSource | EnsembleSource]:
    """``method`` ('proposed' or 'min-max') from a copy of ``base``; returns the result and its source.

    The overrides (epochs, batches, K, PGD iterations, assignment) serve the timing runs, which
    are not stored; ``cache_as`` names the model in the model store; ``validation`` records the
    validation accuracy per epoch.
    """
    model = copy.deepcopy(base)
    if method == "proposed":
        source = EnsembleSource(
            build_ensemble(int(train_split.x.shape[1]), k or cfg.k, cfg, assignment), cfg.lr, cfg.momentum
        )
    else:
        source = minmax_source(cfg, minmax_steps)
    loader = D.loader(train_split, cfg.batch_size, shuffle=True, seed=cfg.seed, with_index=True)
    tc = _train_config(cfg, epochs or cfg.epochs, cfg.lr, cfg.seed, cfg.clean_weight)
    return train(
        model,
        loader,
        tc,
        source,
        on_epoch_end=validation,
        max_batches=max_batches or cfg.max_batches,
        desc=method,
        cache_as=cache_as,
    ), source


def time_per_batch(base: nn.Module, train_split: D.Split, cfg: Config) -> dict[str, list[float]]:
    """Seconds per batch with the PAPER's settings (K = timing_k, timing_minmax_steps PGD iterations),
    ``timing_repeats`` times per method.

    Each method trains a copy of ``base`` for ``timing_batches`` batches a time: once as a warm-up
    (discarded), then once in each of the ``timing_repeats`` interleaved rounds (:func:`lib.timing.interleaved`). Clean training of the same model is timed the same way.
    """

    def clean(epochs: int, batches: int) -> TrainResult:
        loader = D.loader(train_split, cfg.batch_size, True, cfg.seed, with_index=True)
        return train(
            copy.deepcopy(base),
            loader,
            _train_config(cfg, epochs, cfg.lr, cfg.seed, 0.0),
            max_batches=batches,
            desc="timing clean",
        )

    def proposed(assignment: str):
        return lambda epochs, batches: fine_tune(
            base, train_split, cfg, "proposed", epochs, batches, cfg.timing_k, assignment=assignment
        )[0]

    def minmax(epochs: int, batches: int) -> TrainResult:
        return fine_tune(base, train_split, cfg, "min-max", epochs, batches, minmax_steps=cfg.timing_minmax_steps)[0]

    def timed(run_for) -> Callable[[], float]:
        return lambda: per_batch(run_for(1, cfg.timing_batches), cfg.timing_batches)

    def measure() -> dict:
        return {"repeats": interleaved({name: timed(f) for name, f in runs.items()}, cfg.timing_repeats)}

    runs = {
        "clean": clean,
        f"proposed (K={cfg.timing_k}, split)": proposed("split"),
        f"proposed (K={cfg.timing_k}, all)": proposed("all"),
        f"min-max (PGD-L2, {cfg.timing_minmax_steps} it.)": minmax,
    }
    # stored like a model: a stage re-run from the store reports the timing of the run that measured
    return cached(TIMING, {"base": base}, measure, key=(cfg, train_split), seeded=True)["repeats"]


def table1(
    per_batch: dict[str, float], trained: dict[str, TrainResult], batches_per_epoch: int, cfg: Config
) -> pd.DataFrame:
    """Table 1: sec/epoch, paper vs ours, relative to clean training, and proposed / min-max."""
    clean = per_batch["clean"]
    rows = []
    for name, sec in per_batch.items():
        paper = PAPER_SEC_PER_EPOCH.get(name.split(" ")[0])  # the paper does not say which assignment it timed
        rows.append(
            {
                "method": name,
                "metric": f"sec/epoch ({batches_per_epoch} batches of {cfg.batch_size}, from {cfg.timing_batches} timed)",
                "paper": paper,
                "ours": sec * batches_per_epoch,
            }
        )
        rows.append(
            {"method": name, "metric": "relative to clean training", "paper": None, "ours": relative_cost(sec, clean)}
        )
    split = next(v for k, v in per_batch.items() if "split" in k)
    minmax = next(v for k, v in per_batch.items() if k.startswith("min-max"))
    rows.append(
        {
            "method": "proposed (split) / min-max",
            "metric": "ratio",
            "paper": PAPER_SEC_PER_EPOCH["proposed"] / PAPER_SEC_PER_EPOCH["min-max"],
            "ours": split / minmax,
        }
    )
    for name, tr in trained.items():
        rows.append(
            {
                "method": f"{name} (this run's training)",
                "metric": "measured sec/epoch",
                "paper": None,
                "ours": tr.sec_per_epoch,
            }
        )
    table = comparison(rows, ["method"])
    table.loc[table["metric"].str.contains("sec/epoch"), "delta"] = float(
        "nan"
    )  # seconds on different hardware: compare the ratios
    return table


def evaluate(models: dict[str, nn.Module], surrogate: nn.Module, test: tuple, cfg: Config) -> dict:
    """Accuracy vs PGD-L2 eps (Fig. 3), under AutoAttack-L2 at ``cfg.aa_eps``, vs PGD-L∞ eps, and
    under black-box PGD-L2 examples of an independent model."""
    x, y = test
    transferred = {
        e: adversarial_examples(surrogate, x, y, A.pgd, eps=e, steps=cfg.eval_steps, norm="l2")
        for e in cfg.eval_eps
        if e > 0
    }
    out = {}
    for name, m in models.items():
        with evaluation(name):
            l2 = correct_vs_eps(m, x, y, A.pgd, cfg.eval_eps, steps=cfg.eval_steps, norm="l2")
            linf = accuracy_vs_eps(m, x, y, A.pgd, cfg.linf_eps, steps=cfg.eval_steps, norm="linf")
            transfer = [accuracy(m, transferred[e] if e > 0 else x, y) for e in cfg.eval_eps]
            aa = correct_vs_eps(
                m,
                x,
                y,
                A.autoattack,
                cfg.aa_eps,
                norm="l2",
                version=cfg.autoattack,
                iterations=cfg.autoattack_iterations,
                targets=cfg.autoattack_targets,
            )
        out[name] = {
            "pgd_l2": {e: float(c.float().mean()) for e, c in zip(cfg.eval_eps, l2)},
            "autoattack_l2": {e: float(c.float().mean()) for e, c in zip(cfg.aa_eps, aa)},
            "pgd_linf": dict(zip(cfg.linf_eps, linf)),
            "transfer_l2": dict(zip(cfg.eval_eps, transfer)),
            "correct": {
                "pgd_l2": {e: c.numpy().astype(np.int8) for e, c in zip(cfg.eval_eps, l2)},
                "autoattack_l2": {e: c.numpy().astype(np.int8) for e, c in zip(cfg.aa_eps, aa)},
            },
        }
    return out


def accuracy_table(results: dict, key: str, unit: str) -> pd.DataFrame:
    """Accuracy (%) per model (rows) and eps (columns) for one evaluation ``key``."""
    return (
        pd.DataFrame({name: {f"{unit} {e:.4g}": 100 * v for e, v in r[key].items()} for name, r in results.items()})
        .T.rename_axis("model")
        .reset_index()
    )


def curve(results: dict, key: str) -> pd.DataFrame:
    """Accuracy (%) vs eps for one evaluation ``key``: one row per eps, one column per model (DVC's plot data)."""
    return (
        pd.DataFrame({name: {e: 100 * v for e, v in r[key].items()} for name, r in results.items()})
        .rename_axis("eps")
        .reset_index()
    )


def figure2(ensemble: GeneratorEnsemble, x: torch.Tensor, n_generators: int, subtitle: str) -> plt.Figure:
    """Fig. 2: originals (left column) and samples from several generators."""
    with torch.no_grad():
        samples = ensemble.all_samples(x.to(device())).cpu()
    shown = torch.linspace(0, ensemble.k - 1, n_generators).round().long()
    fig, axes = plt.subplots(len(x), n_generators + 1, figsize=(1.3 * (n_generators + 1), 1.3 * len(x)), squeeze=False)
    for i in range(len(x)):
        for j, img in enumerate([x[i], *samples[shown, i]]):
            ax = axes[i][j]
            ax.imshow(img.permute(1, 2, 0).squeeze(-1).numpy(), cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([]), ax.set_yticks([])
            if i == 0:
                ax.set_title("original" if j == 0 else f"generator {int(shown[j - 1])}", fontsize=7)
    fig.suptitle(f"Fig. 2 — adversarial samples from several generators (s = {ensemble.s:g}) ({subtitle})", fontsize=9)
    return fig


def figure3(results: dict, n_images: int, subtitle: str) -> plt.Figure:
    """Fig. 3: accuracy vs PGD-L2 eps (white-box, with the interval over the ``n_images`` test images as error
    bars), with the black-box transfer curves dashed."""
    fig, ax = plt.subplots(figsize=(6.2, 4.2))
    for name, r in results.items():
        line = accuracy_curve(
            ax, r["pgd_l2"], r["pgd_l2"].values(), n_images, marker="o", ms=3, label=f"{name} (white-box)"
        ).lines[0]
        ax.plot(
            list(r["transfer_l2"]),
            [100 * v for v in r["transfer_l2"].values()],
            ls="--",
            color=line.get_color(),
            label=f"{name} (black-box transfer)",
        )
    ax.set(
        xlabel="PGD-L2 eps of the test attack",
        ylabel="test accuracy (%)",
        title=f"Fig. 3 — accuracy vs PGD-L2 eps ({subtitle})",
    )
    legend_outside(ax, 7, ERROR_BARS)
    return fig


def base_gates(r: dict, cfg: Config) -> list[C.Gate]:
    """The base every claim compares against: converged before fine-tuning (validation accuracy), and
    its clean accuracy high enough (at least 85%: the paper does not give its pre-trained ResNet-20's)."""
    return [
        C.converged_history("base (clean pre-training)", r["base"].history),
        C.clean_accuracy("base", 100 * r["results"]["base"]["pgd_l2"][0.0], None, cfg.dataset, stand_in=True),
    ]


def tuned(r: dict, model: str) -> C.Gate:
    """``model``'s fine-tuning converged (validation accuracy)."""
    return C.converged_history(f"{model} fine-tuning", r["trained"][model].history)


def pgd_l2(r: dict, model: str) -> dict[float, float]:
    return r["results"][model]["pgd_l2"]


def attack_eps(cfg: Config) -> list[float]:
    return [e for e in cfg.eval_eps if e > 0]


def attack_checks(r: dict, cfg: Config) -> pd.DataFrame:
    """A check of our white-box attacks, not a claim: per model and eps, accuracy under the white-box
    attacks (the lower of PGD-L2 and AutoAttack-L2) and under the transferred black-box attack; a
    white-box accuracy more than a point above the black-box one means our white-box attack is weak there."""
    rows = []
    for m, res in r["results"].items():
        for e in attack_eps(cfg):
            white = min(res["pgd_l2"][e], res["autoattack_l2"].get(e, 1.0))
            rows.append(
                {
                    "model": m,
                    "eps (L2)": e,
                    "white-box % (lower of PGD-L2, AutoAttack-L2)": 100 * white,
                    "black-box % (transferred PGD-L2)": 100 * res["transfer_l2"][e],
                    "white-box above black-box by over 1 point": "FAIL"
                    if res["transfer_l2"][e] < white - 0.01
                    else "pass",
                }
            )
    return pd.DataFrame(rows)


def _timed(r: dict, prefix: str) -> list[float]:
    """The timed repeats of the method whose Table 1 name contains ``prefix``."""
    return next(v for k, v in r["timing_repeats"].items() if prefix in k)


def time_ratio(r: dict) -> I.Interval:
    """Seconds per batch, proposed (split) over min-max, at the paper's settings: the median of the
    per-round ratios of the interleaved timing rounds, its interval by a bootstrap over the rounds."""
    return I.paired_ratio(_timed(r, "split"), _timed(r, "min-max"))


BEATS_POINTS = 1.0  # "more accurate", "more robust": by more than 1 point
SIMILAR_POINTS = (
    5.0  # "very similar": within 5 points at every eps (the paper's curves overlap within its plot's resolution)
)


def versus(r: dict, a: str, b: str, attack: str, e: float) -> I.Interval:
    """Model ``a``'s accuracy minus ``b``'s under ``attack`` at ``e`` (points), paired on the same test images."""
    return I.paired_difference(r["results"][a]["correct"][attack][e], r["results"][b]["correct"][attack][e])


def model_claims(m: str, cfg: Config) -> list[C.Spec]:
    """The paper's two claims of one fine-tuned model (proposed or min-max) against the base."""
    eps = attack_eps(cfg)

    def slowest(r: dict) -> I.Interval:
        return I.lowest([versus(r, m, "base", "pgd_l2", e) for e in eps])

    return [
        C.Spec(
            f"{m} degrades much slower than the base under PGD-L2 (more accurate by more than {BEATS_POINTS:g} point at "
            "every eps: the smallest gain, points; eps where it is more accurate shown)",
            quantity=lambda r: slowest(r).estimate,
            rule=C.above(BEATS_POINTS),
            gates=lambda r: [*base_gates(r, cfg), tuned(r, m)],
            paper=f"{len(eps)} of {len(eps)}",
            shown=lambda r: f"{sum(pgd_l2(r, m)[e] > pgd_l2(r, 'base')[e] for e in eps)} of {len(eps)}",
            interval=slowest,
        ),
        C.Spec(
            f"{m} loses some clean accuracy against the base (change, points)",
            quantity=lambda r: 100 * (pgd_l2(r, m)[0.0] - pgd_l2(r, "base")[0.0]),
            rule=C.below(0.0),
            gates=lambda r: [*base_gates(r, cfg), tuned(r, m)],
            paper="< 0",
            interval=lambda r: versus(r, m, "base", "pgd_l2", 0.0),
        ),
    ]


def autoattack_claim(m: str, cfg: Config) -> C.Spec:
    """Ours: ``m`` beats the base under AutoAttack-L2 at the largest eps it ran at."""
    e = max(cfg.aa_eps)

    def aa(r: dict, model: str) -> float:
        return r["results"][model]["autoattack_l2"][e]

    return C.Spec(
        f"Ours: {m} is more robust than the base under AutoAttack-L2 ({cfg.autoattack}) at eps {e:g} (by more than "
        f"{BEATS_POINTS:g} point; %, {m} vs base)",
        quantity=lambda r: 100 * (aa(r, m) - aa(r, "base")),
        rule=C.above(BEATS_POINTS),
        gates=lambda r: [*base_gates(r, cfg), tuned(r, m)],
        shown=lambda r: f"{100 * aa(r, m):.1f} vs {100 * aa(r, 'base'):.1f}",
        interval=lambda r: versus(r, m, "base", "autoattack_l2", e),
    )


def claim_specs(cfg: Config) -> list[C.Spec]:
    """The paper's claims (and ours) as data, decided on the result of :func:`run`."""
    eps = attack_eps(cfg)
    both = ("proposed", "min-max")
    return [
        C.Spec(
            f"Proposed and min-max reach very similar accuracy under PGD-L2 (largest gap over eps {eps[0]:g}–{eps[-1]:g}, "
            "points; within 5)",
            quantity=lambda r: 100 * max(abs(pgd_l2(r, "proposed")[e] - pgd_l2(r, "min-max")[e]) for e in eps),
            rule=C.not_above(SIMILAR_POINTS),
            gates=lambda r: [*base_gates(r, cfg), *(tuned(r, m) for m in both)],
            paper="similar",
            interval=lambda r: I.highest([I.absolute(versus(r, "proposed", "min-max", "pgd_l2", e)) for e in eps]),
        ),
        *(spec for m in both for spec in model_claims(m, cfg)),
        *(autoattack_claim(m, cfg) for m in both),
        C.Spec(
            f"Proposed is much cheaper than min-max (time per epoch at the paper's K = {cfg.timing_k} and "
            f"{cfg.timing_minmax_steps} PGD iterations, proposed / min-max; under 0.5)",
            quantity=lambda r: time_ratio(r).estimate,
            rule=C.below(0.5),
            gates=lambda r: [
                *C.steady("proposed (split) / min-max", _timed(r, "split"), _timed(r, "min-max")),
            ],
            interval=time_ratio,
            paper=round(105 / 551, 2),
        ),
    ]


def claims(r: dict, cfg: Config) -> list[C.Claim]:
    """The claims of :func:`claim_specs`, decided on this run (``r`` from :func:`run`), each with its gates."""
    return C.evaluate(claim_specs(cfg), r)


class Measurements(TypedDict):
    """What :func:`run` measures (accuracies as fractions)."""

    models: dict[str, nn.Module]  # base, min-max, proposed
    trained: dict[str, TrainResult]  # the two fine-tunings
    base: TrainResult  # clean pre-training
    per_batch: dict[str, float]  # Table 1's timing: seconds per batch of each method at the paper's settings (median)
    timing_repeats: dict[str, list[float]]  # the timed repeats of each method (seconds per batch)
    results: dict[str, dict]  # per model: accuracy vs eps under each attack (:func:`evaluate`)
    ensemble: GeneratorEnsemble  # the proposed method's generators
    batches_per_epoch: int
    surrogate_accuracy: float  # the black-box source's clean accuracy
    examples: torch.Tensor  # test images for Fig. 2


@dataclass
class Prepared:
    """The data a run reads: the dataset, its splits, the test tensors and the validation hook's data."""

    ds: D.Dataset
    train: D.Split
    val_split: D.Split
    test_split: D.Split
    test: tuple
    val: Validation

    def hook(self, cfg: Config) -> Validation:
        """A fresh validation hook for one model (early stopping keeps that model's best weights)."""
        return validation_hook(self.val.x_val, self.val.y_val, cfg.patience)


def prepare(cfg: Config, data_dir: str | Path) -> Prepared:
    """The data every unit and the evaluation read."""
    ds, train_split, val_split, test_split = load_data(cfg, data_dir)
    return Prepared(ds, train_split, val_split, test_split, D.tensors(test_split), Validation(*D.tensors(val_split)))


def run(cfg: Config, data_dir: str | Path) -> Result[Measurements]:
    """The stage: the data, pre-training, both fine-tunings, timing (its units) and evaluation."""
    seed_everything(cfg.seed)
    units = U.Units("p1_conv_generator_ensemble", plan(cfg).models, cfg, lambda: prepare(cfg, data_dir))
    r = measure(units, cfg)
    data = units.data
    stand_in = "" if cfg.dataset == "cifar10" else " — STAND-IN for the paper's CIFAR-10"
    samples = {"train": len(data.train), "validation": len(data.val_split), "test": len(data.test_split)}
    return Result(r, f"{cfg.dataset} ({data.ds.source}){stand_in}", samples)


BASE = "base (clean pre-training)"
SURROGATE = "black-box surrogate (independent clean model)"
TIMING = "table 1 timing runs"


def fine_tuned(method: str) -> str:
    return f"fine-tune {method}"


def measure(units: U.Units, cfg: Config) -> Measurements:
    """Base and surrogate pre-training, both fine-tunings and timing (``units``), then the evaluation."""
    data = units.data
    base = units.get(BASE)
    surrogate = units.get(SURROGATE).final
    (proposed, source), (minmax, _) = (units.get(fine_tuned(m)) for m in ("proposed", "min-max"))
    trained = {"proposed": proposed, "min-max": minmax}
    models = {"base": base.final, "min-max": trained["min-max"].final, "proposed": trained["proposed"].final}
    timing = units.get(TIMING)
    results = evaluate(models, surrogate, data.test, cfg)
    return {
        "models": models,
        "trained": trained,
        "base": base,
        "per_batch": {name: float(np.median(seconds)) for name, seconds in timing.items()},
        "timing_repeats": timing,
        "results": results,
        "ensemble": source.ensemble,
        "batches_per_epoch": math.ceil(len(data.train) / cfg.batch_size),
        "surrogate_accuracy": accuracy(surrogate, *data.test),
        "examples": D.examples(data.test_split, cfg.n_examples, cfg.seed)[0],
    }


def summary_metrics(r: dict) -> dict:
    """The headline numbers for metrics.json (accuracies as fractions, seconds on this machine)."""
    return {
        "accuracy": {
            m: {k: {f"{e:g}": v for e, v in d.items()} for k, d in res.items() if k != "correct"}
            for m, res in r["results"].items()
        },
        "sec_per_batch_paper_settings": r["per_batch"],
        "sec_per_epoch_this_run": {m: tr.sec_per_epoch for m, tr in r["trained"].items()}
        | {"base": r["base"].sec_per_epoch},
        "surrogate_clean_accuracy": r["surrogate_accuracy"],
    }


def headline_metrics(r: dict, cfg: Config) -> dict[str, float]:
    """metrics.json: the numbers the claims rest on (accuracy in %, cost as a ratio)."""
    l2 = {m: res["pgd_l2"] for m, res in r["results"].items()}
    top = max(e for e in cfg.eval_eps)
    out = {}
    for m, key in (("base", "base"), ("proposed", "proposed"), ("min-max", "minmax")):
        if m in l2:
            if 0.0 in l2[m]:
                out[f"clean_acc_{key}"] = round(100 * l2[m][0.0], 2)
            out[f"pgd_l2_acc_at_max_eps_{key}"] = round(100 * l2[m][top], 2)
            out[f"autoattack_l2_acc_at_eps_{max(cfg.aa_eps):g}_{key}"] = round(
                100 * r["results"][m]["autoattack_l2"][max(cfg.aa_eps)], 2
            )
    eps = [e for e in cfg.eval_eps if e > 0]
    if {"proposed", "min-max"} <= l2.keys() and eps:
        out["pgd_l2_max_gap_proposed_minmax"] = round(
            100 * max(abs(l2["proposed"][e] - l2["min-max"][e]) for e in eps), 2
        )
    split = next(v for k, v in r["per_batch"].items() if "split" in k)
    minmax = next(v for k, v in r["per_batch"].items() if k.startswith("min-max"))
    out["batch_time_proposed_over_minmax"] = round(split / minmax, 3)
    out["batch_time_proposed_over_clean"] = round(split / r["per_batch"]["clean"], 3)
    return out


def plan(cfg: Config) -> P.StagePlan:
    """The stage's units under ``cfg`` (what it trains, what each builds on, how) and their cost (:mod:`lib.plan`)."""
    name = cfg.dataset
    n = P.train_size(name, cfg.n_train, cfg.n_val)
    plan = P.StagePlan("p1_conv_generator_ensemble", cfg.profile, n)
    model = P.Model(cfg.model, P.shape_of(name), P.classes_of(name))
    both = 1 + (cfg.clean_weight > 0)

    def pretrained(seed: int, desc: str):
        return lambda u: pretrain(u.data.ds, u.data.train, cfg, seed, desc, u.data.hook(cfg))

    def tuned(method: str):
        def fit(u: U.Units) -> tuple[TrainResult, AttackSource | EnsembleSource]:
            base = u.get(BASE).final
            return fine_tune(base, u.data.train, cfg, method, cache_as=fine_tuned(method), validation=u.data.hook(cfg))

        return fit

    plan.add(BASE, model, cfg.base_epochs, n, 1, cfg.batch_size, pretrained(cfg.seed, BASE))
    plan.add(SURROGATE, model, cfg.base_epochs, n, 1, cfg.batch_size, pretrained(cfg.seed + 100, SURROGATE))
    # the generators' ascent + the classifier
    plan.add(fine_tuned("proposed"), model, cfg.epochs, n, 1 + both, cfg.batch_size, tuned("proposed"), (BASE,))
    plan.add(
        fine_tuned("min-max"), model, cfg.epochs, n, cfg.minmax_steps + both, cfg.batch_size, tuned("min-max"), (BASE,)
    )
    timed = 4 * (1 + cfg.timing_repeats) * cfg.timing_batches * cfg.batch_size  # 4 methods: a warm-up + the rounds
    plan.add(
        TIMING,
        model,
        1,
        timed,
        (1 + 2 * (1 + both) + cfg.timing_minmax_steps + both) / 4,
        cfg.batch_size,
        lambda u: time_per_batch(u.get(BASE).final, u.data.train, cfg),
        (BASE,),
        exclusive=True,
    )
    return plan
