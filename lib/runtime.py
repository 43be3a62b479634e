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


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch; make CPU kernels deterministic."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    if torch.backends.cudnn.is_available():
        torch.backends.cudnn.benchmark = False


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


def git_commit() -> str:
    """The repository's HEAD commit, or 'unknown' outside a git checkout."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            check=True,
        )
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def metadata(profile: str, dataset: str, samples: dict, seed: int, started: float) -> dict:
    """The block stored in every metrics.json: where and how the numbers were produced."""
    return {
        "profile": profile,
        "reduced": profile != "paper",
        "dataset": dataset,
        "samples": samples,
        "seed": seed,
        "device": device_name(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "git_commit": git_commit(),
        "wall_time_s": round(time.time() - started, 1),
    }


def progress(iterable, **kwargs):
    """tqdm.auto progress bar, silent under CI (``CI`` set) or when ``disable`` is given."""
    from tqdm.auto import tqdm

    kwargs.setdefault("disable", bool(os.environ.get("CI")))
    kwargs.setdefault("leave", False)
    return tqdm(iterable, **kwargs)


def synchronize() -> None:
    """Wait for queued GPU work so wall-clock timings are honest."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def repo_path(path: str | Path) -> Path:
    """``path`` itself if absolute, else relative to the repository root (not the notebook's folder)."""
    path = Path(path)
    return path if path.is_absolute() else REPO_ROOT / path
