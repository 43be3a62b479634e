"""Thin importable package behind the replication notebooks.

Modules by concept: :mod:`lib.data`, :mod:`lib.models`, :mod:`lib.attacks`,
:mod:`lib.train`, :mod:`lib.evaluate`, :mod:`lib.report`; one module per paper's
algorithm under :mod:`lib.methods` and one per stage (its protocol) under :mod:`lib.stages`, whose
``__init__`` is the registry of stages.
"""

from lib.errors import ConfigError

__all__ = ["ConfigError"]
