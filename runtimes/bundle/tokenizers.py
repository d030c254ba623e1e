"""The tokenizer kinds a bundle may name: for each, the files its entry names, its fields with their
types, its bounds, and the reader that builds it from verified bytes.

A bundle's ``tokenizer`` entry is untrusted: ``check_entry`` refuses wrong types and values before
anything is read, and a reader gets file contents only through ``read(rel) -> bytes`` (the
runtime's verified opening), so it never opens a path itself. A kind we do not run (written by the
exporter for tokenizers the device cannot run) passes the check and is refused by ``load``.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from rada_export.errors import RadaError

KIND_CLIP_BPE = "clip_bpe"  # OpenAI CLIP's byte-level BPE (runtimes/tokenizer.py)
KIND_HF = "hf_tokenizers"  # a Hugging Face tokenizer.json (runtimes/hf_tokenizer.py)
CLIP_BPE_VOCAB = "tokenizer/bpe_simple_vocab_16e6.txt.gz"
HF_TOKENIZER_FILE = "tokenizer/tokenizer.json"

MAX_CONTEXT_LENGTH = 4096  # open_clip models use 64 to 256; each id row costs the text encoder L^2
MAX_VOCAB_GZIP_BYTES = 16 << 20  # open_clip's CLIP vocabulary is 1.3 MB compressed
MAX_VOCAB_TEXT_BYTES = 64 << 20  # and 3.3 MB expanded: a 3 MB file expanding to 3 GB stops here
MAX_TOKENIZER_JSON_BYTES = 128 << 20  # Gemma's 256k vocabulary is about 33 MB
MAX_TOKEN_ID = 1 << 24
_FIX = "re-export the bundle with `rada-export onnx`"

_FILE_WORDS = {"vocab": "vocabulary file", "file": "tokenizer file"}
_STR, _INT, _BOOL = (str,), (int,), (bool,)
_OPT_STR, _OPT_INT = (str, type(None)), (int, type(None))


@dataclass(frozen=True)
class TokenizerKind:
    """One kind: the entry keys that name files, every key's accepted types, and its reader
    (``module:callable``, imported on first use so that checking a manifest loads no tokenizer)."""

    kind: str
    files: tuple[str, ...]
    fields: Mapping[str, tuple[type, ...]]
    reader: str
    max_file_bytes: int


KINDS: dict[str, TokenizerKind] = {
    KIND_CLIP_BPE: TokenizerKind(
        KIND_CLIP_BPE, ("vocab",), {"kind": _STR, "vocab": _STR, "context_length": _INT, "clean": _STR},
        "rada_export.runtimes.tokenizer:ClipTokenizer.from_entry", MAX_VOCAB_GZIP_BYTES),
    KIND_HF: TokenizerKind(
        KIND_HF, ("file",), {"kind": _STR, "file": _STR, "context_length": _INT, "clean": _STR, "pad_id": _INT,
                             "pad_token": _OPT_STR, "strip_sep_token": _BOOL, "sep_id": _OPT_INT},
        "rada_export.runtimes.hf_tokenizer:HFTokenizer.from_entry", MAX_TOKENIZER_JSON_BYTES),
}


def _bad(problem: str) -> RadaError:
    return RadaError(f"the bundle's manifest is invalid: tokenizer {problem}", _FIX)


def named_files(entry: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(entry key, relative path) of every file a known kind's entry names."""
    spec = KINDS.get(entry.get("kind")) if isinstance(entry, Mapping) else None
    if spec is None:
        return []
    return [(key, entry[key]) for key in spec.files if key in entry]


def check_entry(entry: Mapping[str, Any], context_length: int | None = None) -> None:
    """Types and bounds of a tokenizer entry (no filesystem access); unknown kinds pass (``load`` refuses them)."""
    kind = entry.get("kind")
    spec = KINDS.get(kind)
    if spec is None:
        if not isinstance(kind, str) or len(kind) > 200:
            raise _bad(f"kind must be a short string, got {type(kind).__name__}")
        return
    for key, value in entry.items():
        accepted = spec.fields.get(key)
        if accepted is None:
            continue  # written by a newer rada-export: ignored, as the manifest ignores unknown keys
        if isinstance(value, bool) and bool not in accepted or not isinstance(value, accepted):
            names = " or ".join("null" if t is type(None) else t.__name__ for t in accepted)
            raise _bad(f"field {key!r} must be {names}, got {type(value).__name__}")
    for key in spec.files:
        if key not in entry:
            raise _bad(f"entry of kind {kind!r} names no {_FILE_WORDS.get(key, 'file')} ({key!r})")
    if "context_length" not in entry:
        raise _bad(f"entry of kind {kind!r} has no 'context_length'")
    length = entry["context_length"]
    if not 2 <= length <= MAX_CONTEXT_LENGTH:
        raise _bad(f"context_length is {length}, outside [2, {MAX_CONTEXT_LENGTH}]")
    if context_length is not None and length != context_length:
        raise _bad(f"context_length is {length} but the bundle's context_length (its text graph's) is {context_length}")
    for key in ("pad_id", "sep_id"):
        value = entry.get(key)
        if value is not None and not 0 <= value < MAX_TOKEN_ID:
            raise _bad(f"{key} is {value}, outside [0, {MAX_TOKEN_ID})")


def load(entry: Mapping[str, Any], read: Callable[[str, int], bytes]) -> Any:
    """The tokenizer an entry describes, its files read through ``read(rel, max_bytes) -> bytes``
    (bundle-relative path; a file over the kind's bound is refused by ``read``)."""
    if not isinstance(entry, Mapping) or not entry:
        raise RadaError(f"the bundle's manifest has no usable tokenizer entry (got {entry!r:.80})",
                        "re-export the bundle with a rada-export that records the tokenizer")
    kind = entry.get("kind")
    spec = KINDS.get(kind)
    if spec is None:
        raise RadaError(
            f"tokenizer kind {str(kind)[:80]!r} is not supported by the torch-free runtime yet (it runs "
            f"{', '.join(repr(k) for k in KINDS)})",
            "compute the class text features at export time (`rada-export onnx` stores them in the bundle), "
            "or change classes on a machine with open_clip")
    check_entry(entry)
    module, _, attr = spec.reader.partition(":")
    reader: Any = importlib.import_module(module)
    for part in attr.split("."):
        reader = getattr(reader, part)
    return reader(entry, lambda rel: read(rel, spec.max_file_bytes))
