"""What every tokenizer of the runtime does to its input first: check it, and clean the text.

The cleaning modes are open_clip's (``clean`` in a bundle's tokenizer entry): the text encoder was
exported against ids of cleaned text, so a tokenizer must clean exactly as open_clip did.
"""

from __future__ import annotations

import html
import string
from collections.abc import Iterable
from typing import Any, Callable

import ftfy
import numpy as np

from rada_export.errors import RadaError

from .bundle.tokenizers import MAX_CONTEXT_LENGTH

CLEAN_MODES = ("lower", "whitespace", "canonicalize")

_PUNCTUATION_TABLE = str.maketrans("", "", string.punctuation)


def _fix(text: str) -> str:
    # Twice, because scraped captions often carry doubly escaped entities ("&amp;amp;").
    return html.unescape(html.unescape(ftfy.fix_text(text))).strip()


def clean_lower(text: str) -> str:
    return " ".join(_fix(text).split()).lower()


def clean_whitespace(text: str) -> str:
    return " ".join(_fix(text).split())


def clean_canonicalize(text: str) -> str:
    text = _fix(text).replace("_", " ").translate(_PUNCTUATION_TABLE).lower()
    return " ".join(text.split())


CLEANERS: dict[str, Callable[[str], str]] = {
    "lower": clean_lower, "whitespace": clean_whitespace, "canonicalize": clean_canonicalize,
}


def check_context_length(value: Any) -> int:
    """The context length as an int, from 2 (room for the start and end tokens) to MAX_CONTEXT_LENGTH
    (every tokenized text is a row of that many ids: a huge value would exhaust memory)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 2 <= int(value) <= MAX_CONTEXT_LENGTH:
        raise RadaError(
            f"context_length must be an integer from 2 (room for the start and end tokens) to {MAX_CONTEXT_LENGTH}, "
            f"got {str(value)[:40]!r}",
            "use the model's context length, 77 for CLIP",
        )
    return int(value)


def as_text_list(texts: Any) -> list[str]:
    """One str or a sequence of str, as a list of str."""
    if isinstance(texts, str):
        return [texts]
    if isinstance(texts, (bytes, bytearray)) or not isinstance(texts, Iterable):
        raise RadaError(
            f"the tokenizer takes a str or a sequence of str, got {type(texts).__name__}",
            "decode bytes first (text.decode('utf-8')) and pass str",
        )
    batch = list(texts)
    for index, text in enumerate(batch):
        if not isinstance(text, str):
            raise RadaError(
                f"the tokenizer takes a sequence of str, but item {index} is a {type(text).__name__} ({text!r:.60})",
                "pass every prompt as str",
            )
    return batch
