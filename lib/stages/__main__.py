"""``python -m lib.stages``: the registered stages, one per line."""

import sys

from lib.stages import main

sys.exit(main())
