"""Device choice, seeding and the metadata block every result carries."""

from __future__ import annotations

import os
import platform
import random
import subprocess
import time
from pathlib import Path

import numpy as np
import torch

REPO_ROOT = Path(__file__).resolve().parent.parent


def device() -> torch.device:
    """CUDA when available, CPU otherwise."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class Acceleration:
    """How training uses a GPU. On the CPU nothing here changes anything: kernels are always
    deterministic and the data path is the DataLoader's.

    ``fast`` (CUDA only): bf16 autocast in training (training-time attacks included; evaluation
    stays float32), channels-last conv nets, data moved to the device once and batched by index.
    ``deterministic`` (CUDA only): deterministic kernels and no cuDNN autotuning; None = True
    except for the ``paper`` profile.
    """

    fast: bool = True
    deterministic: bool | None = None
    profile: str = "smoke"

    @classmethod
    def configure(cls, profile: str, deterministic: bool | None = None, fast: bool = True) -> None:
        cls.profile, cls.deterministic, cls.fast = profile, deterministic, fast

    @classmethod
    def gpu_fast(cls, dev: torch.device) -> bool:
        """Whether training on ``dev`` takes the fast GPU path."""
        return cls.fast and torch.device(dev).type == "cuda"

    @classmethod
    def deterministic_kernels(cls) -> bool:
        if not torch.cuda.is_available():
            return True
        return cls.profile != "paper" if cls.deterministic is None else cls.deterministic


class DryRun:
    """The full-size dry run (``python -m lib.pipeline STAGE --dry-run``): the stage's whole code on
    data of the real sizes, with every training run cut to ``epochs`` epochs of one batch, every
    iterative attack (training-time and evaluation) to ``iterations_cap`` iterations and every
    evaluation set to its first ``examples_cap`` examples (64, or what ``--examples`` set: the
    pipeline hands it to the notebook's kernel in ``LIB_DRY_RUN_EXAMPLES``). Off (``on = False``)
    in every real run, where nothing here changes anything."""

    on: bool = False
    epochs_cap: int = 2
    iterations_cap: int = 2
    examples_cap: int = 64
    EXAMPLES = "LIB_DRY_RUN_EXAMPLES"

    @classmethod
    def configure(cls, on: bool) -> None:
        cls.on = on
        cls.examples_cap = int(os.environ.get(cls.EXAMPLES, 64))

    @classmethod
    def epochs(cls, epochs: int) -> int:
        return min(epochs, cls.epochs_cap) if cls.on else epochs

    @classmethod
    def batches(cls, max_batches: int | None) -> int | None:
        """Batches per epoch: ``max_batches`` in a real run, one in the dry run."""
        return 1 if cls.on else max_batches

    @classmethod
    def iterations(cls, steps: int) -> int:
        """An iterative attack's iterations (or search steps): ``steps``, at most two in the dry run."""
        return min(steps, cls.iterations_cap) if cls.on else steps

    @classmethod
    def examples(cls, n: int) -> int:
        return min(n, cls.examples_cap) if cls.on else n


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch; deterministic kernels (always on the CPU; see :class:`Acceleration`)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)
    deterministic = Acceleration.deterministic_kernels()
    torch.use_deterministic_algorithms(deterministic, warn_only=True)
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    if torch.backends.cudnn.is_available():
        torch.backends.cudnn.benchmark = not deterministic


def device_name() -> str:
    """Human-readable name of the compute device (GPU model or CPU model and core count)."""
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"CPU: {cpu} ({os.cpu_count()} cores, {torch.get_num_threads()} torch threads)"


PIPELINE_OUTPUTS = ("results/", "models/", "dvc.lock", "README.md")  # written by `dvc repro`, not its inputs
STAGE_INPUTS = (
    "lib/",
    "notebooks/",
    "profiles/",
    "params.yaml",
    "dvc.yaml",
    "pyproject.toml",
)  # an untracked file here can change a run
TOOLS = ("torch", "torchvision", "numpy", "papermill", "nbconvert", "dvc")
ATTACK_LIBRARIES = {"foolbox": "foolbox", "autoattack": "pyautoattack"}  # import name -> distribution


def _git(root: Path, *args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    return out.stdout


def git_state(root: Path = REPO_ROOT) -> dict:
    """HEAD's commit, the tracked input files that differ from it (pipeline outputs excluded) and
    the untracked, not ignored files among the stages' inputs (a new module under ``lib/``): either
    makes the tree dirty."""
    commit = _git(root, "rev-parse", "--short", "HEAD")
    if commit is None:
        return {"commit": "unknown (not a git checkout)", "dirty": None, "changed_files": [], "untracked_files": []}
    changed = (_git(root, "diff", "--name-only", "HEAD") or "").splitlines()
    changed = sorted(f for f in changed if not f.startswith(PIPELINE_OUTPUTS))
    untracked = (_git(root, "ls-files", "--others", "--exclude-standard", "--", *STAGE_INPUTS) or "").splitlines()
    untracked = sorted(f for f in untracked if not f.startswith(PIPELINE_OUTPUTS))
    return {
        "commit": commit.strip(),
        "dirty": bool(changed or untracked),
        "changed_files": changed,
        "untracked_files": untracked,
    }


def versions(names: tuple[str, ...] = TOOLS) -> dict[str, str]:
    """Installed versions of ``names`` (distribution names), 'not installed' where absent."""
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in names:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "not installed"
    return found


def attack_libraries() -> dict[str, str]:
    """Versions of the third-party attack libraries this process has imported."""
    import sys

    used = [dist for module, dist in ATTACK_LIBRARIES.items() if module in sys.modules]
    return versions(tuple(used))


def metadata(profile: str, dataset: str, samples: dict, seed: int, started: float) -> dict:
    """The block stored in every details.json: where and how the numbers were produced.

    The pipeline adds ``provenance`` (commit, dirty tree, parameter hash, tool versions)."""
    return {
        "profile": profile,
        "reduced": profile != "paper",
        "dataset": dataset,
        "samples": samples,
        "seed": seed,
        "device": device_name(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "wall_time_s": round(time.time() - started, 1),
    }


QUIET = "LIB_PROGRESS"  # set to 0 by lib.pipeline for the notebooks it executes: no bars in their outputs


def progress(iterable, **kwargs):
    """tqdm.auto progress bar in an interactive session or on a terminal; none (the iterable itself)
    under CI (``CI`` set), in a pipeline run (``LIB_PROGRESS=0``) or when ``disable`` is given."""
    if kwargs.pop("disable", False) or os.environ.get("CI") or os.environ.get(QUIET) == "0":
        return iterable
    from tqdm.auto import tqdm

    kwargs.setdefault("leave", False)
    return tqdm(iterable, **kwargs)


def synchronize() -> None:
    """Wait for queued GPU work so wall-clock timings are honest."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def repo_relative(path: str | Path) -> str:
    """``path`` relative to the repository root when inside it (results carry no machine paths)."""
    path = Path(path).resolve()
    return str(path.relative_to(REPO_ROOT)) if path.is_relative_to(REPO_ROOT) else str(path)


def repo_path(path: str | Path) -> Path:
    """``path`` itself if absolute, else relative to the repository root (not the notebook's folder)."""
    path = Path(path)
    return path if path.is_absolute() else REPO_ROOT / path
