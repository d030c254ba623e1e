"""Crash-safe replacement of a bundle folder: now runtimes/bundle/swap.py, which this name stays for (older imports and tests).

The name is the very same module object, not a copy of its names, so that anything set on one is
seen through the other.
"""

import sys

from .bundle import swap as moved

sys.modules[__name__] = moved
