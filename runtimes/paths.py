"""Confinement of the paths a bundle names: now runtimes/bundle/paths.py, which this name stays for (older imports and tests).

The name is the very same module object, not a copy of its names, so that anything set on one is
seen through the other.
"""

import sys

from .bundle import paths as moved

sys.modules[__name__] = moved
