"""The registry: every stage of the pipeline (the papers in order, then compare).

Read by the pipeline, the plan, the README, the bench, the dry run, the Makefile and the generator of
``dvc.yaml`` (``python -m lib.stages --dvc``). A stage is four files and one line here:

- ``lib/methods/<paper>.py``: the paper's algorithm (networks, perturbation source, update, attack);
- ``lib/stages/<stage>.py``: the protocol: its ``Config`` (the one declaration of its parameters, defaults =
  the paper's), ``plan(cfg)``, one entry point ``run(cfg, data_dir) -> Result`` (its measurements typed by
  the stage's ``Measurements``), tables, figures and its claims as data (``claim_specs``);
- ``notebooks/<stage>.ipynb``: the executed results section;
- ``profiles/<stage>.yaml``: the values of its parameters per profile (smoke, cpu, paper).

``dvc.yaml`` is generated from this registry (:mod:`lib.dvcfile`).
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Generic, TypeVar

from lib.errors import ConfigError
from lib.runtime import REPO_ROOT

M = TypeVar("M")


@dataclass
class Result(Generic[M]):
    """What a stage's ``run(cfg, data_dir)`` returns: its measurements (typed by the stage's
    ``Measurements``), and the data it ran on as the notebook's metadata states it."""

    measurements: M
    dataset: str  # the data: name, source, stand-in or not
    samples: dict[str, int]  # examples per split


@dataclass(frozen=True)
class Table:
    """A results table the README shows: its title, the table files tried in turn (first existing wins),
    and the columns kept (a regex; None = all)."""

    title: str
    names: tuple[str, ...]
    columns: str | None = None


@dataclass(frozen=True)
class Plot:
    """A DVC plot (``dvc plots show`` / ``dvc plots diff`` draw it from data, two revisions in one chart):
    its title, the table ``tables/<table>.csv`` the stage writes, the x column and the y columns."""

    title: str
    table: str
    x: str
    y: tuple[str, ...]
    y_label: str = "accuracy (%)"
    template: str = "linear"


@dataclass(frozen=True)
class Stage:
    """One stage: its name (= DVC stage = notebook = profiles file = stage module) and what the README shows."""

    name: str
    headline: Table
    robustness: Table | None = None  # beside our PGD and AutoAttack
    plots: tuple[Plot, ...] = ()  # DVC plots from its data files (dvc.yaml's top-level ``plots:``)
    paper: str = ""  # the paper: authors, *title*, where it appeared (a link only where one was found and checked)
    module: str = ""  # the stage module; default lib.stages.<name>
    notebook: Path | None = None  # default notebooks/<name>.ipynb

    def __post_init__(self):
        object.__setattr__(self, "module", self.module or f"lib.stages.{self.name}")
        object.__setattr__(self, "paper", self.paper or PAPERS.get(self.name, ""))
        object.__setattr__(self, "notebook", Path(self.notebook or REPO_ROOT / "notebooks" / f"{self.name}.ipynb"))

    def load(self) -> ModuleType:
        """The stage module (its ``Config``, ``plan``, ``run``, tables, figures and claims)."""
        return importlib.import_module(self.module)


P1_MODELS = ("base", "proposed", "min-max")  # p1's three classifiers, the columns of its curves
P3_COLUMNS = r"^(defence|(MNIST|F-MNIST) (Original|BIM\(10\)) (paper|ours)|sec/epoch rel\. FGSM-Adv (paper|ours))$"
P2_COLUMNS = r"^(defence|setting|attack|(W-box acc|mean L2|B-box acc|benign acc|cost vs Baseline) (paper|ours))$"

PAPERS = {  # authors, title, where it appeared (a link only where one was found and checked)
    "p1_conv_generator_ensemble": "Jung, *Adversarial Sample Generation and Training using Neural Network*",
    "p2_pgn": (
        "anonymous (ICLR 2020 submission), *Adversarial Training with Perturbation Generator Networks* "
        "([OpenReview](https://openreview.net/forum?id=S1xXiREKDB); code: [ATPGN/ATPGN](https://github.com/ATPGN/ATPGN))"
    ),
    "p3_single_step_reuse": (
        "Liu, Khalil, Khreishah, *Using Intuition from Empirical Properties to Simplify Adversarial Training Defense* "
        "(DSN-W 2019; [arXiv:1906.11729](https://arxiv.org/abs/1906.11729))"
    ),
    "p4_resnet_transfer_augmentation": (
        "Ali, Raza, Gan, *An adversarial training method for enhancing the robustness of deep neural networks against "
        "adversarial attacks* (University of Essex)"
    ),
    "p5_mnist_gan": "Xia & Liu, *Adversarial Examples Generation and Defense Based on Generative Adversarial Network* (Stanford)",
    "compare": "ours: the five defences and three references under one threat model",
}

_STAGES = [
    Stage(
        "p1_conv_generator_ensemble",
        Table("p1 — Jung, conv-generator ensemble: Table 1 (training cost)", ("table1_time",)),
        Table(
            "p1 — accuracy (%) under AutoAttack-L2 (PGD-L2's table: `accuracy_pgd_l2.md`)", ("accuracy_autoattack_l2",)
        ),
        plots=tuple(
            Plot(f"p1: accuracy under {attack} vs eps", f"curve_{key}", "eps", P1_MODELS)
            for attack, key in (("PGD-L2", "pgd_l2"), ("PGD-L∞", "pgd_linf"))  # AutoAttack-L2: one eps on `cpu`
        ),
    ),
    Stage(
        "p2_pgn",
        Table(
            "p2 — PGN: Table 3 layout (defence x attack; benign accuracies matched)",
            ("table3_cifar10", "table2_cifar100", "table3_fashion_mnist_standin"),
            P2_COLUMNS,
        ),
    ),
    Stage(
        "p3_single_step_reuse",
        Table(
            "p3 — Liu, Khalil, Khreishah, single-step reuse: Table I (accuracy %, BIM(10) columns)",
            ("table1",),
            P3_COLUMNS,
        ),
        Table("p3 — BIM, PGD and AutoAttack accuracy (%), the gradient-masking check", ("pgd_check",)),
    ),
    Stage(
        "p4_resnet_transfer_augmentation",
        Table("p4 — Ali, Raza, Gan, ResNet transfer augmentation: average gains", ("average_gains",)),
        Table(
            "p4 — Table 4 layout after retraining (proposed): FGSM, PGD and AutoAttack accuracy (%)",
            ("table4_proposed",),
        ),
    ),
    Stage(
        "p5_mnist_gan",
        Table("p5 — Xia & Liu, MNIST GAN perturbations: headline", ("headline",)),
        Table("p5 — robustness of each classifier: FGSM, PGD, AutoAttack and G's images (%)", ("robustness",)),
    ),
    Stage(
        "compare",
        Table(
            "compare — all defences under one threat model: leaderboard (RobustBench's columns; the rest in the notebook)",
            ("leaderboard",),
            r"^(defence|paper|setting|clean \(%\)|AutoAttack (L∞|L2) [\d.]+ \(%\)|cost \(× clean epoch\)|images \(AutoAttack\))$",
        ),
        plots=(
            Plot(
                "compare: AutoAttack L∞ accuracy of every defence",
                "plot_leaderboard",
                "AutoAttack L∞ (%)",
                ("defence",),
                "defence",
                "bar_horizontal",
            ),
        ),
    ),
]
STAGES: dict[str, Stage] = {s.name: s for s in _STAGES}


def get(name: str) -> Stage:
    """The registered stage ``name``; one clear error naming the known ones if there is none."""
    if name not in STAGES:
        raise ConfigError(f"unknown stage '{name}'; notebooks: {', '.join(sorted(STAGES))}")
    return STAGES[name]


def names() -> list[str]:
    return list(STAGES)


@contextmanager
def registered(stage: Stage) -> Iterator[Stage]:
    """``stage`` in the registry for the duration (a stage added at run time, e.g. by a test)."""
    STAGES[stage.name] = stage
    try:
        yield stage
    finally:
        STAGES.pop(stage.name, None)
