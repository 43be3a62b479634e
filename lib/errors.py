"""The one error type a user sees for bad input, and the one line for a fault of the environment."""

from __future__ import annotations

import errno
import os
import re
from collections.abc import Mapping
from pathlib import Path

NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
NO_PERMISSION = (errno.EACCES, errno.EPERM, errno.EROFS)


class ConfigError(ValueError):
    """Bad input: unknown profile/dataset/model, invalid parameter, missing data, corrupt file."""


def require(condition: bool, message: str) -> None:
    """Raise :class:`ConfigError` with ``message`` unless ``condition`` holds."""
    if not condition:
        raise ConfigError(message)


def _place(path: Path, roots: Mapping[str, Path]) -> tuple[str, str | None]:
    """The folder to name for ``path`` (one of ``roots``, the option that moves it: ``--models``),
    repository-relative; else the path's own folder and no option."""
    from lib.runtime import repo_relative

    path = Path(path).resolve()
    for option, root in roots.items():
        root = Path(root).resolve()
        if path == root or path.is_relative_to(root):
            return repo_relative(root) + "/", option
    return repo_relative(path.parent) + "/", None


def existing_ancestor(path: str | Path) -> Path:
    """``path`` if it exists, else its nearest existing parent (the folder that will hold it)."""
    path = Path(path).absolute()
    return next(p for p in (path, *path.parents) if p.exists())


def _fullest(roots: Mapping[str, Path]) -> Path | None:
    """The root whose device has the least free space, if that is under 1 MiB (a full disk)."""
    import shutil

    free = {Path(root): shutil.disk_usage(existing_ancestor(root)).free for root in roots.values()}
    if not free:
        return None
    root = min(free, key=free.get)
    return root if free[root] < 2**20 else None


def environment_message(code: int, path: str | Path | None, roots: Mapping[str, Path] = {}) -> str | None:
    """One line for a full disk or a missing permission on ``path`` (errno ``code``), naming the
    folder and what to do; None for any other errno."""
    from lib.runtime import repo_relative

    if code not in NO_SPACE + NO_PERMISSION:
        return None
    if path is None:  # a failed write() names no file: name the root whose device is full
        path = _fullest(roots) if code in NO_SPACE else None
        if path is None:
            places = " or ".join(repo_relative(r) + "/" for r in roots.values()) or "a folder this run writes"
            return f"{os.strerror(code).lower()} while writing to {places}; check the space and permissions there"
        place, option = _place(path, roots)
        return f"no space left on the device holding {place}; free some space there" + (
            f", or point {option} at another folder" if option else ""
        )
    place, option = _place(Path(path), roots)
    elsewhere = f", or point {option} at another folder" if option else ""
    if code in NO_SPACE:
        return f"no space left on the device holding {place} (writing {repo_relative(path)}); free some space there{elsewhere}"
    folder = Path(path) if Path(path).is_dir() else Path(path).parent  # what needs the permission
    return (
        f"no permission to write {repo_relative(path)} ({os.strerror(code).lower()}); make {repo_relative(folder)}/ "
        f"writable for this user{elsewhere}"
    )


def environment_error(err: OSError, roots: Mapping[str, Path] = {}) -> ConfigError | None:
    """:func:`environment_message` of an ``OSError`` as a :class:`ConfigError` (None if it is not one)."""
    message = environment_message(err.errno, err.filename, roots)
    return None if message is None else ConfigError(message)


def environment_error_at(err: OSError, path: Path, roots: Mapping[str, Path] = {}) -> ConfigError | None:
    """:func:`environment_error`, naming ``path`` where the error names no file (a failed write)."""
    message = environment_message(err.errno, err.filename or path, roots)
    return None if message is None else ConfigError(message)


_ERRNO_TEXT = re.compile(r"\[Errno (\d+)\][^:']*(?:: '([^']*)')?")
_OUR_TEXT = re.compile(r"^no space left on the device holding .*\(writing (.+?)\)|^no permission to write (\S+) ")


def environment_error_in(text: str, roots: Mapping[str, Path] = {}) -> ConfigError | None:
    """The same, read from an exception's text as a notebook reports it ("[Errno 28] No space left
    on device: '/path'", or our own message from :func:`environment_message`), now naming the option
    that moves the folder."""
    ours = _OUR_TEXT.search(text)
    if ours is not None:
        code, path = (errno.ENOSPC, ours.group(1)) if ours.group(1) else (errno.EACCES, ours.group(2))
    else:
        match = _ERRNO_TEXT.search(text)
        if match is None:
            return None
        code, path = int(match.group(1)), match.group(2)
    message = environment_message(code, path, roots)
    return None if message is None else ConfigError(message)
