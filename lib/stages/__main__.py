"""``python -m lib.stages``: the registered stages, one per line (the Makefile reads them)."""

from lib.stages import STAGES

print("\n".join(STAGES))
