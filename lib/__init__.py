"""Thin importable package behind the replication notebooks.

Modules by concept: :mod:`lib.data`, :mod:`lib.models`, :mod:`lib.attacks`,
:mod:`lib.train`, :mod:`lib.evaluate`, :mod:`lib.report`, and one module per
paper's method under :mod:`lib.methods`.
"""

from lib.errors import ConfigError

__all__ = ["ConfigError"]
