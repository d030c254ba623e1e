"""Bounded JSON: every JSON file a bundle carries is read through here.

Python's ``json`` refuses integers of more than 4,300 digits with a plain ValueError, recurses once
per nesting level, and reads whatever size it is given; a bundle is untrusted, so the size and the
nesting are bounded and every failure is one RadaError naming the file.
"""

from __future__ import annotations

import json
from typing import Any

from rada_export.errors import RadaError

MAX_JSON_BYTES = 64 << 20  # a manifest of thousands of classes is a few MB
MAX_JSON_DEPTH = 32  # the deepest structure we write is 5 levels


def nesting_depth(value: Any, limit: int = MAX_JSON_DEPTH) -> int:
    """How deep ``value`` nests (a scalar is 0), counting at most to ``limit + 1`` (no recursion)."""
    deepest, stack = 0, [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list)):
            depth += 1
            deepest = max(deepest, depth)
            if depth > limit:
                return depth
            stack.extend((v, depth) for v in (item.values() if isinstance(item, dict) else item))
    return deepest


def _too_deep(text: str | bytes, limit: int) -> bool:
    """A bracket count over the raw text, before ``json`` recurses into it (strings may hold brackets:
    a count that says "too deep" is confirmed on the parsed value)."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    depth = 0
    for ch in text:
        if ch in "[{":
            depth += 1
            if depth > limit:
                return True
        elif ch in "]}":
            depth -= 1
    return False


def parse_json(data: str | bytes, what: str, fix: str, max_bytes: int = MAX_JSON_BYTES,
               max_depth: int = MAX_JSON_DEPTH, kind: str = "JSON") -> Any:
    """``data`` parsed, or a RadaError about ``what`` (too large, too deeply nested, not JSON)."""
    if len(data) > max_bytes:
        raise RadaError(f"{what} is {len(data)} bytes, more than the {max_bytes} a bundle's JSON may hold", fix)
    try:
        if isinstance(data, bytes):
            data = data.decode("utf-8")
        if _too_deep(data, max_depth):
            value = json.loads(data)  # a bracket count can be fooled by brackets inside strings
            if nesting_depth(value, max_depth) > max_depth:
                raise RadaError(f"{what} nests deeper than {max_depth} levels", fix)
            return value
        return json.loads(data)
    except RadaError:
        raise
    except (ValueError, RecursionError, UnicodeDecodeError) as err:  # ValueError: also integers over 4,300 digits
        raise RadaError(f"{what} is not a valid {kind} ({type(err).__name__}: {str(err).splitlines()[0][:120]})", fix) from None


def read_json_file(path, what: str, fix: str, max_bytes: int = MAX_JSON_BYTES, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """A JSON file read with the bounds above; OSError becomes a RadaError too."""
    try:
        with open(path, "rb") as fh:
            data = fh.read(max_bytes + 1)
    except OSError as err:
        raise RadaError(f"cannot read {what} ({err.strerror or err})", fix) from None
    return parse_json(data, what, fix, max_bytes, max_depth)
