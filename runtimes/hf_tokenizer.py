"""Hugging Face tokenizers (SigLIP, SigLIP2...) on the device, from the bundle's tokenizer.json.

open_clip tokenizes these families with ``transformers.AutoTokenizer``; the fast tokenizer it loads
is the ``tokenizers`` library reading a tokenizer.json, which needs neither torch nor transformers.
Around it this does what open_clip's ``HFTokenizer`` does: the same text cleaning, special tokens from
the file's post-processor, truncation to the context length and padding with the pad token
(https://huggingface.co/docs/tokenizers/api/tokenizer).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rada_export.errors import RadaError

from .bundle.tokenizers import KIND_HF, MAX_TOKENIZER_JSON_BYTES
from .text_input import CLEANERS, as_text_list, check_context_length

__all__ = ["HFTokenizer", "KIND_HF"]


def _guarded(what: str, call: Callable[[], Any]) -> Any:
    """``call()`` with the tokenizers library's failures as one RadaError: a malformed file raises a
    plain Exception, and a regex that panics in Rust raises PanicException, a BaseException."""
    try:
        return call()
    except RadaError:
        raise
    except (KeyboardInterrupt, SystemExit, GeneratorExit):
        raise
    except BaseException as err:  # noqa: B036 - pyo3's PanicException is not an Exception
        raise RadaError(f"{what} ({type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''})",
                        "re-export the bundle with `rada-export onnx`") from None


class HFTokenizer:
    """Text -> int64 token ids (K x context_length), as open_clip's HFTokenizer gives them."""

    def __init__(self, path: str | Path, context_length: int, clean: str = "whitespace", pad_id: int = 0,
                 pad_token: str | None = None, strip_sep_token: bool = False, sep_id: int | None = None, *,
                 content: bytes | None = None):
        """``content``: the tokenizer.json's bytes, already read (and verified) by the caller; else
        ``path`` is read."""
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
            if content is None:
                with open(path, "rb") as fh:
                    content = fh.read(MAX_TOKENIZER_JSON_BYTES + 1)
            if len(content) > MAX_TOKENIZER_JSON_BYTES:
                raise ValueError(f"larger than {MAX_TOKENIZER_JSON_BYTES >> 20} MiB")
            self._json = content.decode("utf-8")
        except (OSError, ValueError) as err:
            raise RadaError(f"{path} is not a readable tokenizer.json ({str(err)[:200]})", "re-export the bundle") from None
        self._tokenizer = _guarded(f"{path} is not a usable tokenizer.json", lambda: self._configured(self.context_length))
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
        """From a bundle folder (its files read confined to it): the same as ``load_tokenizer``."""
        from .tokenizer import load_tokenizer

        return load_tokenizer(bundle_path, entry)

    @classmethod
    def from_entry(cls, entry: dict[str, Any], read: Callable[[str], bytes]) -> "HFTokenizer":
        """The registry's reader (bundle/tokenizers.py): the entry is checked, ``read`` gives verified bytes."""
        return cls(
            entry["file"], context_length=entry["context_length"], clean=entry.get("clean", "whitespace"),
            pad_id=entry.get("pad_id", 0), pad_token=entry.get("pad_token"),
            strip_sep_token=bool(entry.get("strip_sep_token", False)), sep_id=entry.get("sep_id"), content=read(entry["file"]),
        )

    def __call__(self, texts: str | Sequence[str], context_length: int | None = None) -> np.ndarray:
        length = self.context_length if context_length is None else check_context_length(context_length)
        batch = [self._clean_fn(t) for t in as_text_list(texts)]
        tok = self._tokenizer if length == self.context_length else _guarded(
            "the bundle's tokenizer.json", lambda: self._configured(length))
        encoded = _guarded("the bundle's tokenizer.json failed on this text", lambda: tok.encode_batch(batch))
        out = np.array([enc.ids for enc in encoded], dtype=np.int64).reshape(len(batch), length)
        if self.strip_sep_token and self.sep_id is not None:
            out[out == self.sep_id] = 0
        return out
