"""params.yaml: one ``profile`` switch and one section per stage, each with a block per profile.

A stage's effective parameters are its ``common`` block overlaid with the active profile's
block. The ``profile`` key at the top selects smoke | cpu | paper; ``dvc exp run -S
profile=paper`` switches every stage at once.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from lib.errors import ConfigError, require
from lib.runtime import REPO_ROOT

PROFILES = ("smoke", "cpu", "paper")
PARAMS_FILE = REPO_ROOT / "params.yaml"


def check_profile(profile: str) -> str:
    """Return ``profile`` if known, else raise a clear error."""
    require(profile in PROFILES, f"unknown profile '{profile}'; choose one of {', '.join(PROFILES)}")
    return profile


def read_params(path: Path | str = PARAMS_FILE) -> dict:
    """The whole params.yaml as a dict."""
    try:
        with open(path) as f:
            return yaml.safe_load(f) or {}
    except (OSError, yaml.YAMLError) as err:
        raise ConfigError(f"cannot read parameters file {path}: {err}") from None


def load_stage_params(stage: str, profile: str | None = None, path: Path | str = PARAMS_FILE) -> dict:
    """Effective parameters of ``stage`` for ``profile`` (default: the file's ``profile`` switch)."""
    params = read_params(path)
    profile = check_profile(profile or params.get("profile", "cpu"))
    require(stage in params, f"params file {path} has no section '{stage}'")
    section = params[stage] or {}
    require(profile in section, f"section '{stage}' of {path} has no '{profile}' block")
    merged = dict(section.get("common") or {})
    merged.update(section[profile] or {})
    merged["profile"] = profile
    return merged
