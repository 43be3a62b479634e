"""Model checkpoints: written atomically, read with ``weights_only=True``, damage reported clearly.

A damaged file is never half-used: it is one :class:`ConfigError` that names the file and the
command that rebuilds it.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn as nn

from lib.errors import ConfigError
from lib.runtime import repo_relative


def write(blob: dict, path: Path | str) -> Path:
    """``torch.save`` ``blob`` (tensors, numbers, strings) to ``path`` via a temporary file, so a
    kill never leaves half a file under the final name."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(blob, tmp)
    os.replace(tmp, path)
    return path


def read(path: Path | str, rebuild: str) -> dict:
    """What :func:`write` stored (``weights_only=True``); one :class:`ConfigError` naming the file and
    ``rebuild`` (the command that remakes it) if it is missing, damaged or not a dict."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"checkpoint {repo_relative(path)} does not exist; build it with `{rebuild}`")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # torch raises pickle, zip and runtime errors of many kinds for a damaged file
        blob = None
    if not isinstance(blob, dict):
        raise ConfigError(f"checkpoint {repo_relative(path)} is corrupt or truncated; rebuild it with `{rebuild}`")
    return blob


def save(model: nn.Module, path: Path | str) -> Path:
    """Write ``model``'s state dict to ``path`` (never half-written)."""
    return write(model.state_dict(), path)


def load(model: nn.Module, path: Path | str, rebuild: str) -> nn.Module:
    """Load the state dict at ``path`` into ``model``; ``rebuild`` is the command that remakes it."""
    state = read(path, rebuild)
    if not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConfigError(f"checkpoint {repo_relative(path)} is corrupt or truncated; rebuild it with `{rebuild}`")
    try:
        model.load_state_dict(state)
    except RuntimeError:
        raise ConfigError(f"checkpoint {repo_relative(path)} does not fit a {type(model).__name__} of this "
                          f"configuration; rebuild it with `{rebuild}`") from None
    return model
