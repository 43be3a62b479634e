"""One run per stage at a time: a lock file per stage beside its results (``filelock``).

The lock is an OS file lock (``flock``): the kernel releases it when its process ends, however it
ends, so a lock left by a killed run is simply taken over. Beside it, ``.<stage>.lock.owner``
names the holder (PID and start time) for the message a second run prints, and lets the next
run say that it took over from a run that ended without releasing.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock, Timeout

from lib.errors import ConfigError


class StageBusy(ConfigError):
    """Another run of the same stage holds its lock."""


def lock_path(results_root: Path, stage: str) -> Path:
    return Path(results_root) / f".{stage}.lock"


def _owner_path(results_root: Path, stage: str) -> Path:
    return Path(results_root) / f".{stage}.lock.owner"


def _read_owner(path: Path) -> dict | None:
    try:
        owner = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return owner if isinstance(owner, dict) else None


def _owner_once_written(path: Path, wait_s: float = 3.0) -> dict | None:
    """The owner record of the run holding the lock, waiting up to ``wait_s`` for it: the holder writes it just
    after taking the lock, and on a loaded machine a second run can look in between."""
    deadline = time.monotonic() + wait_s
    while (owner := _read_owner(path)) is None and time.monotonic() < deadline:
        time.sleep(0.05)
    return owner


def _describe(owner: dict | None) -> str:
    if owner is None:
        return "PID unknown"
    return f"PID {owner.get('pid', '?')}, started {owner.get('started', '?')}"


@contextmanager
def stage_lock(results_root: Path, stage: str) -> Iterator[dict | None]:
    """Hold ``stage``'s lock for the duration; :class:`StageBusy` at once if another run holds it.

    Yields the owner record of an earlier run that ended without releasing (None normally)."""
    results_root = Path(results_root)
    results_root.mkdir(parents=True, exist_ok=True)
    lock = FileLock(lock_path(results_root, stage), timeout=0)
    owner_file = _owner_path(results_root, stage)
    try:
        lock.acquire()
    except Timeout:
        raise StageBusy(
            f"{stage} is already running ({_describe(_owner_once_written(owner_file))}); wait for it to "
            "finish, or stop it, before starting another run of this stage"
        ) from None
    try:
        stale = _read_owner(owner_file) if owner_file.exists() else None
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime())
        written = owner_file.with_name(owner_file.name + ".tmp")  # whole or absent: a reader never sees half
        written.write_text(json.dumps({"pid": os.getpid(), "started": started}) + "\n")
        os.replace(written, owner_file)
        yield stale
    finally:
        owner_file.unlink(missing_ok=True)
        lock.release()


def stale_note(stage: str, stale: dict | None) -> str | None:
    """The line a run prints when it took over the lock of a run that ended without releasing it."""
    if stale is None:
        return None
    return f"note: took over the lock of an earlier {stage} run that ended without releasing it ({_describe(stale)})"
