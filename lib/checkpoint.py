"""Model checkpoints: written atomically, read with ``weights_only=True``, damage reported clearly.

A damaged file is never half-used: it is one :class:`ConfigError` that names the file and the
command that rebuilds it. A full disk or a missing permission while writing is one
:class:`ConfigError` too, naming the folder, and leaves no partial file. :func:`digest` is the
content digest the model and evaluation stores record in each entry and check when loading it.
"""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

import torch
import torch.nn as nn

from lib.errors import ConfigError, environment_error_at
from lib.runtime import repo_relative


def write(blob: dict, path: Path | str) -> Path:
    """``torch.save`` ``blob`` (tensors, numbers, strings) to ``path`` via a temporary file, so a
    kill, a full disk or a missing permission never leaves half a file under the final name (nor
    the temporary one)."""
    path = Path(path)
    buffer = io.BytesIO()
    torch.save(blob, buffer)  # serialised first: a failed write is then an OSError with its errno
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            f.write(buffer.getbuffer())
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        mapped = environment_error_at(err, path)
        if mapped is None:
            raise
        raise mapped from None
    return path


def digest(obj: object) -> str:
    """SHA-256 of nested dicts, lists, tensors, numbers and strings (a tensor by dtype, shape and
    bytes): any flipped bit of a stored entry's content changes it."""
    h = hashlib.sha256()

    def add(o: object) -> None:
        if isinstance(o, torch.Tensor):
            t = o.detach().cpu().contiguous()
            h.update(f"tensor:{t.dtype}:{tuple(t.shape)}:".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
        elif isinstance(o, dict):
            h.update(f"dict:{len(o)}:".encode())
            for k in sorted(o, key=repr):
                add(k)
                add(o[k])
        elif isinstance(o, (list, tuple)):
            h.update(f"{type(o).__name__}:{len(o)}:".encode())
            for v in o:
                add(v)
        else:
            h.update(f"{type(o).__name__}:{o!r};".encode())

    add(obj)
    return h.hexdigest()


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
        raise ConfigError(
            f"checkpoint {repo_relative(path)} does not fit a {type(model).__name__} of this "
            f"configuration; rebuild it with `{rebuild}`"
        ) from None
    return model
