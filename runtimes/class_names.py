"""The one check of class names, shared by every way they come in: the exporter's class list and
class folders, a bundle's manifest, and the runtime's ``set_classes``.

A class name travels far: into the tokenizer and the text encoder, into ``classes.txt`` (one name a
line), into the JSON manifest, and onto a one-line console report. So a name must be text that
survives each of them unchanged:

- no line breaks or other control characters (``classes.txt`` would gain lines the bundle has no
  classes for), no lone surrogates (they cannot be written as UTF-8), no byte order mark;
- no special token of a CLIP tokenizer (``<end_of_text>``...): the tokenizer turns it into the
  real marker and the text encoder reads nothing after it, so two such names that start alike get
  the same text features;
- distinct from every other name once the tokenizer's cleaning is applied: it lowercases, and it
  composes accents (Unicode NFC), so ``Cat``/``cat`` and a composed/decomposed ``é`` are one class.

This module imports only the standard library and ``rada_export.errors``: the runtime uses it.
"""

from __future__ import annotations

import html
import re
import unicodedata
from typing import Any, Sequence

from rada_export.errors import RadaError

# Special tokens of open_clip's SimpleTokenizer and of Hugging Face CLIP tokenizers, as they read
# after the tokenizer's cleaning (lowercase; full-width forms and HTML escapes already folded).
RESERVED_TOKENS = ("<start_of_text>", "<end_of_text>", "<|startoftext|>", "<|endoftext|>")

# CLIP reads 77 tokens of each prompt, a few hundred characters at most: a longer name can only
# differ from another where the model no longer reads, and costs tokenizer time for nothing.
MAX_NAME_LENGTH = 1000

BYTE_ORDER_MARK = "\ufeff"

# Control characters (Unicode category Cc), the line and paragraph separators (which end a line for
# str.splitlines as a newline does), lone surrogates (not encodable as UTF-8) and the byte order mark.
_REFUSED = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff\ufeff]")
_NUMBERS = {1: "one", 2: "two", 3: "three"}
_CONTROL_NAMES = {"\x00": "a NUL character", "\t": "a tab", "\n": "a newline", "\r": "a carriage return",
                  "\x0b": "a vertical tab", "\x0c": "a form feed", "\x85": "a next-line character"}


def check_class_names(names: Any, *, minimum: int = 2, field: str = "classes") -> list[str]:
    """The names, each stripped of surrounding whitespace, or a RadaError (``field``) naming the
    first problem: none given, fewer than ``minimum``, an empty or over-long name, a character no
    name may hold, a tokenizer special token, or two names the tokenizer reads as one.

    A single string counts as one name (not as a sequence of one-letter names).
    """
    if not isinstance(names, str):
        try:
            names = list(names)  # an iterator is read once
        except TypeError:
            pass  # reported below
    problem = class_names_problem(names, minimum=minimum)
    if problem is not None:
        raise RadaError(problem[0], problem[1], field=field)
    return [n.strip() for n in ([names] if isinstance(names, str) else names)]


def class_names_problem(names: Any, *, minimum: int = 2) -> tuple[str, str] | None:
    """(problem, fix) for the first thing wrong with ``names``, or None when they are fine."""
    if isinstance(names, str):
        names = [names]
    try:
        names = list(names)
    except TypeError:
        return (f"class names must be a list of strings, got {type(names).__name__}",
                "pass one string per class: ['cat', 'dog']")
    for name in names:
        if not isinstance(name, str):
            return (f"class names must be strings, got {type(name).__name__} {_short(repr(name))}",
                    "pass one string per class: ['cat', 'dog']")
    names = [n.strip() for n in names]
    count = _NUMBERS.get(minimum, str(minimum))
    if not any(names):
        return ("the class list is empty", f"give at least {count} class name{'s' if minimum > 1 else ''} "
                "(comma-separated, or a file with one name a line)")
    if not all(names):
        return "the class list holds an empty name", "remove blank entries from the class list"
    if len(names) < minimum:
        return (f"only {len(names)} class name(s) given ({_short(repr(names[0]))}): a classifier needs at least "
                f"{count} classes", f"give at least {count} class names: 'cat,dog', or a file with one name a line")
    for name in names:
        problem = name_problem(name)
        if problem is not None:
            return problem
    return duplicates_problem(names)


def name_problem(name: str) -> tuple[str, str] | None:
    """(problem, fix) for one (stripped, non-empty) class name, or None."""
    if len(name) > MAX_NAME_LENGTH:
        return (f"class name {_short(repr(name))} is {len(name)} characters long; the limit is {MAX_NAME_LENGTH} "
                "(CLIP reads only the first 77 tokens of a prompt)", "shorten the class name")
    refused = _REFUSED.search(name)
    if refused is not None:
        char = refused.group()
        if char == BYTE_ORDER_MARK:
            return (f"class {_short(repr(name))} holds a byte order mark (U+FEFF), an invisible character that "
                    "Windows editors write at the start of a file",
                    "remove it from the name (save the class file as UTF-8 without BOM)")
        return (f"class {_short(repr(name))} holds {describe(char)}: a class name must be one line of printable text",
                "remove control characters and line breaks from the class name")
    token = reserved_token(name)
    if token is not None:
        return (f"class {_short(repr(name))} holds {token!r}, a special token of the CLIP tokenizer: the text "
                "encoder reads nothing after it, so names that start alike would get the same text features",
                f"remove {token!r} from the class name")
    return None


def reserved_token(text: str) -> str | None:
    """The first tokenizer special token that ``text`` turns into once the tokenizer has cleaned it."""
    # What the tokenizers' cleaning does before matching special tokens: ftfy folds full-width
    # forms, HTML escapes are undone twice, and the text is lowercased.
    cleaned = html.unescape(html.unescape(unicodedata.normalize("NFKC", text))).lower()
    for token in RESERVED_TOKENS:
        if token in cleaned:
            return token
    return None


def same_name_key(name: str) -> str:
    """What the tokenizer sees of a name: lowercased and Unicode-composed (NFC)."""
    return unicodedata.normalize("NFC", unicodedata.normalize("NFC", name).lower())


def duplicates(names: Sequence[str]) -> list[str]:
    """Names that another name equals once lowercased and composed (linear in the number of names)."""
    groups: dict[str, list[str]] = {}
    for name in names:
        groups.setdefault(same_name_key(name), []).append(name)
    return sorted({n for group in groups.values() if len(group) > 1 for n in group})


def duplicates_problem(names: Sequence[str]) -> tuple[str, str] | None:
    """(problem, fix) when two names are one class to the tokenizer, else None."""
    seen: dict[str, str] = {}
    pairs: list[tuple[str, str]] = []  # (earlier name, later name) that the tokenizer reads alike
    for name in names:
        key = same_name_key(name)
        if key in seen:
            pairs.append((seen[key], name))
        else:
            seen[key] = name
    if not pairs:
        return None
    for earlier, later in pairs:
        if earlier.lower() != later.lower():  # equal only once composed: NFC against NFD
            return (f"classes {ascii(earlier)} and {ascii(later)} are the same name written in two Unicode "
                    "normalisation forms (composed, NFC, and decomposed, NFD): they look alike and the "
                    "tokenizer reads them as the same text",
                    "keep one of them, written in composed form (NFC, what most editors save)")
    dupes = sorted({n for pair in pairs for n in pair})
    case = " (ignoring case: the tokenizer lowercases)" if any(a != b for a, b in pairs) else ""
    more = f" and {len(dupes) - 10} more" if len(dupes) > 10 else ""
    return (f"duplicate class names{case}: {', '.join(_short(d) for d in dupes[:10])}{more}",
            "each class must appear once in the class list")


def describe(char: str) -> str:
    """A character as a message names it: what it is, and its code point."""
    if unicodedata.category(char) == "Cs":
        what = "a lone surrogate"
    elif char in _CONTROL_NAMES:
        what = _CONTROL_NAMES[char]
    else:
        what = f"the character {unicodedata.name(char)}" if unicodedata.name(char, "") else "a control character"
    return f"{what} (U+{ord(char):04X})"


def _short(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."
