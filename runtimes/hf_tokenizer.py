"""Hugging Face tokenizers (SigLIP, SigLIP2...) on the device, from the bundle's tokenizer.json.

open_clip tokenizes these families with ``transformers.AutoTokenizer``; the fast tokenizer it loads
is the ``tokenizers`` library reading a tokenizer.json, which needs neither torch nor transformers.
Around it this does what open_clip's ``HFTokenizer`` does: the same text cleaning, special tokens from
the file's post-processor, truncation to the context length and padding with the pad token
(https://huggingface.co/docs/tokenizers/api/tokenizer).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rada_export.errors import RadaError

from .text_input import CLEANERS, as_text_list, check_context_length

KIND_HF = "hf_tokenizers"


def _confined(bundle: Path, rel: Any) -> Path:
    if not isinstance(rel, str) or not rel or Path(rel).is_absolute() or ".." in Path(rel).parts:
        raise RadaError(f"the manifest's tokenizer file {rel!r} is not a path inside the bundle", "re-export the bundle")
    path = (bundle / rel).resolve()
    if not path.is_relative_to(bundle.resolve()) or not path.is_file():
        raise RadaError(f"the bundle's tokenizer file {rel} is missing or points outside the bundle", "re-export the bundle")
    return path


class HFTokenizer:
    """Text -> int64 token ids (K x context_length), as open_clip's HFTokenizer gives them."""

    def __init__(self, path: str | Path, context_length: int, clean: str = "whitespace", pad_id: int = 0,
                 pad_token: str | None = None, strip_sep_token: bool = False, sep_id: int | None = None):
        try:
            from tokenizers import Tokenizer
        except ImportError as err:
            raise RadaError("this bundle's text tokenizer needs the `tokenizers` package",
                            "pip install tokenizers (rada-export lists it as a dependency)") from err
        if clean not in CLEANERS:
            raise RadaError(f"unknown text cleaning {clean!r}", f"use one of: {', '.join(CLEANERS)}")
        self.context_length = check_context_length(context_length)
        self._clean_fn = CLEANERS[clean]
        self.pad_id = int(pad_id)
        self.pad_token = pad_token
        try:
            self._json = Path(path).read_text(encoding="utf-8")
            self._tokenizer = self._configured(self.context_length)
        except RadaError:
            raise
        except Exception as err:  # tokenizers raises a plain Exception for a malformed file
            raise RadaError(f"{path} is not a readable tokenizer.json ({str(err)[:200]})", "re-export the bundle") from err
        self.strip_sep_token = strip_sep_token
        self.sep_id = sep_id

    def _configured(self, length: int):
        """A tokenizer that truncates and pads to `length` as transformers' padding="max_length",
        truncation=True does (special tokens from the post-processor are kept within the length).
        Configured once and then only read: encoding is thread-safe, the runtime is shared by threads."""
        from tokenizers import Tokenizer

        tok = Tokenizer.from_str(self._json)
        tok.enable_truncation(max_length=length)
        tok.enable_padding(length=length, pad_id=self.pad_id, pad_token=self.pad_token or "<pad>")
        return tok

    @classmethod
    def from_manifest_entry(cls, bundle_path: str | Path, entry: dict[str, Any]) -> "HFTokenizer":
        bundle = Path(bundle_path)
        return cls(
            _confined(bundle, entry.get("file")), context_length=entry.get("context_length"),
            clean=entry.get("clean", "whitespace"), pad_id=entry.get("pad_id", 0), pad_token=entry.get("pad_token"),
            strip_sep_token=bool(entry.get("strip_sep_token", False)), sep_id=entry.get("sep_id"),
        )

    def __call__(self, texts: str | Sequence[str], context_length: int | None = None) -> np.ndarray:
        length = self.context_length if context_length is None else check_context_length(context_length)
        batch = [self._clean_fn(t) for t in as_text_list(texts)]
        tok = self._tokenizer if length == self.context_length else self._configured(length)
        out = np.array([enc.ids for enc in tok.encode_batch(batch)], dtype=np.int64).reshape(len(batch), length)
        if self.strip_sep_token and self.sep_id is not None:
            out[out == self.sep_id] = 0
        return out
