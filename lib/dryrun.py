"""The full-size dry run: a stage's whole notebook on synthetic data of the real sizes, cut short.

``python -m lib.pipeline STAGE --profile paper --dry-run`` proves a profile's code path end to end
(shapes, memory, data handling, tables, figures, claims) in minutes, without the real data:

- data: random images of each dataset's real shape and size (:data:`SIZES`), written once into
  ``build/dry-run/data`` (uint8, balanced labels; what a model learns from them means nothing);
- training: every run cut to two epochs of one batch; every iterative attack, training-time and
  evaluation, cut to two iterations (:class:`lib.runtime.DryRun`);
- evaluation: every evaluation set cut to its first 64 examples (``--examples N``: N), PGD to one restart, curves over
  iterations to two points, timing runs to one batch (:func:`overrides`);
- output: ``build/dry-run/results/<stage>`` and a fresh model store ``build/dry-run/models/<stage>``,
  never ``results/`` or ``models/``.
"""

from __future__ import annotations

import torch

from lib import data as D
from lib.runtime import REPO_ROOT, DryRun

ROOT = REPO_ROOT / "build" / "dry-run"

# train, test, shape, classes: the real datasets' sizes (cats vs dogs: Oxford-IIIT Pet, trainval / test)
SIZES = {
    "mnist": (60_000, 10_000, (1, 28, 28), 10),
    "fashion_mnist": (60_000, 10_000, (1, 28, 28), 10),
    "mnist5k": (4_000, 1_000, (1, 28, 28), 10),
    "cifar10": (50_000, 10_000, (3, 32, 32), 10),
    "cifar100": (50_000, 10_000, (3, 32, 32), 100),
    "cats_vs_dogs": (3_680, 3_669, (3, D.CATS_VS_DOGS_SIZE, D.CATS_VS_DOGS_SIZE), 2),
}

EVALUATION_SIZES = ("n_rho", "n_foolbox", "track_n")


def cuts() -> str:
    """The dry run's cuts, in words."""
    return (
        f"{DryRun.epochs_cap} epochs of 1 batch per model, {DryRun.iterations_cap} iterations per attack, "
        f"{DryRun.examples_cap} examples per evaluation set"
    )


def synthetic(name: str, seed: int = 0) -> D.Dataset:
    """Random uint8 images and balanced labels at ``name``'s real size and shape."""
    n_train, n_test, shape, classes = SIZES[name]
    g = torch.Generator().manual_seed(seed)

    def split(n: int) -> D.Split:
        return D.Split(
            torch.randint(0, 256, (n, *shape), generator=g, dtype=torch.uint8),
            (torch.arange(n) % classes)[torch.randperm(n, generator=g)],
        )

    return D.Dataset(name, split(n_train), split(n_test), classes, f"synthetic {name} of the real size (dry run)")


def datasets_of(params: dict) -> list[str]:
    """The datasets a stage's parameters name (``dataset``, or ``datasets`` as a list or a mapping)."""
    names = params.get("datasets", [params["dataset"]] if "dataset" in params else [])
    return list(names)


def prepare(names: list[str], folder=ROOT / "data") -> str:
    """Write each dataset's synthetic stand-in once (kept between dry runs); returns the folder."""
    for name in names:
        path = folder / f"{name}.pt"
        if not path.exists():
            D.save_prepared(synthetic(name), folder)
    return str(folder)


def overrides(params: dict, batch_size: int | None = None) -> dict:
    """The parameters the dry run changes beyond :class:`lib.runtime.DryRun`'s cuts: evaluation
    sizes, restarts, curve points, timing batches (and, when given, every batch size, for a
    CPU-sized check of a GPU profile)."""
    out = {}
    for key, value in params.items():
        if key == "bim_iterations":  # p3's BIM-N curve: one attack per N
            out[key] = list(value)[: DryRun.iterations_cap]
        elif key == "pgd_restarts":
            out[key] = 1
        elif key == "timing_batches":
            out[key] = 1
        elif key in EVALUATION_SIZES and isinstance(value, int):
            out[key] = min(value, DryRun.examples_cap)
        elif batch_size is not None and key.endswith("batch_size"):
            out[key] = batch_size
    return out
