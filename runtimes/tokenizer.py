"""CLIP's byte-level BPE tokenizer, without torch.

Gives the same token ids as open_clip's ``SimpleTokenizer`` (what ``open_clip.get_tokenizer`` returns
for the OpenAI-style CLIP models): the text encoder of a bundle was exported against those ids, so
any difference here would silently change the class text features computed on the device.
Needs numpy, regex (for the Unicode classes ``\\p{L}`` / ``\\p{N}``) and ftfy.
"""

from __future__ import annotations

import gzip
import io
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import regex

from rada_export.errors import RadaError

from .bundle.tokenizers import KIND_CLIP_BPE, KIND_HF, MAX_VOCAB_TEXT_BYTES
from .bundle.tokenizers import load as load_kind
from .text_input import CLEAN_MODES, CLEANERS, as_text_list, check_context_length

SOT = "<start_of_text>"
EOT = "<end_of_text>"
DEFAULT_CONTEXT_LENGTH = 77
__all__ = ["ClipTokenizer", "KIND_CLIP_BPE", "KIND_HF", "byte_symbols", "load_tokenizer"]

# The vocabulary is 256 byte symbols, the same 256 with "</w>", the merges, and the two special
# tokens: 49408 ids. The merges file has a version line first and more merges than CLIP kept.
_N_MERGES = 49152 - 256 - 2
_CACHE_LIMIT = 200_000  # bounds memory on a device that tokenizes free text for a long time


def byte_symbols() -> list[str]:
    """One printable character per byte value, indexed by the byte.

    BPE works on text, and CLIP's merges were learned on a text in which every byte is one
    character: printable Latin-1 bytes stand for themselves, the other bytes (controls, space,
    soft hyphen...) are moved to code points 256 and up, in byte order.
    """
    keep = set(range(0x21, 0x7F)) | set(range(0xA1, 0xAD)) | set(range(0xAE, 0x100))
    symbols = []
    shifted = 0
    for byte in range(256):
        if byte in keep:
            symbols.append(chr(byte))
        else:
            symbols.append(chr(256 + shifted))
            shifted += 1
    return symbols


def _vocab_order(symbols: list[str]) -> list[str]:
    # Ids follow code point order (printable bytes first, then the moved ones), not byte order.
    return sorted(symbols, key=ord)


class ClipTokenizer:
    """Text -> int64 token ids (K x context_length), as open_clip's SimpleTokenizer."""

    def __init__(self, vocab_path: str | Path, context_length: int = DEFAULT_CONTEXT_LENGTH, clean: str = "lower", *,
                 vocab_bytes: bytes | None = None):
        """``vocab_bytes``: the gzip file's content, already read (and verified) by the caller; else
        ``vocab_path`` is read."""
        self.vocab_path = Path(vocab_path)
        self.context_length = check_context_length(context_length)
        if clean not in CLEANERS:
            raise RadaError(
                f"unknown text cleaning {clean!r} for the CLIP tokenizer",
                f"use one of: {', '.join(CLEAN_MODES)}",
            )
        self.clean = clean
        self._clean_fn = CLEANERS[clean]

        merges = _read_merges(self.vocab_path, vocab_bytes)
        symbols = byte_symbols()
        self._byte_symbol = symbols
        base = _vocab_order(symbols)
        vocab = base + [s + "</w>" for s in base] + ["".join(pair) for pair in merges] + [SOT, EOT]
        # Later entries win on a repeated key, which is also what open_clip's dict(zip(...)) does.
        self.encoder: dict[str, int] = {}
        for index, piece in enumerate(vocab):
            self.encoder[piece] = index
        self.ranks: dict[tuple[str, str], int] = {}
        for index, pair in enumerate(merges):
            self.ranks[pair] = index
        self.sot_token_id = self.encoder[SOT]
        self.eot_token_id = self.encoder[EOT]
        self.vocab_size = len(self.encoder)
        # Special tokens typed in the text itself are matched whole and map to their own ids.
        self._pattern = regex.compile(
            regex.escape(SOT) + "|" + regex.escape(EOT)
            + r"|'s|'t|'re|'ve|'m|'ll|'d|\p{L}+|\p{N}|[^\s\p{L}\p{N}]+",
            regex.IGNORECASE,
        )
        self._cache: dict[str, tuple[int, ...]] = {}

    @classmethod
    def from_manifest_entry(cls, bundle_path: str | Path, entry: dict[str, Any]) -> "ClipTokenizer":
        """The tokenizer a bundle's manifest describes (its ``tokenizer`` section), read from the folder
        (any registered kind: the same as ``load_tokenizer``)."""
        return load_tokenizer(bundle_path, entry)

    @classmethod
    def from_entry(cls, entry: dict[str, Any], read: Callable[[str], bytes]) -> "ClipTokenizer":
        """The registry's reader (bundle/tokenizers.py): the entry is checked, ``read`` gives verified bytes."""
        vocab = entry["vocab"]
        return cls(vocab, context_length=entry["context_length"], clean=entry.get("clean", "lower"),
                   vocab_bytes=read(vocab))

    def bpe(self, word: str) -> tuple[int, ...]:
        """Ids of one pre-tokenized word (already mapped to byte symbols)."""
        cached = self._cache.get(word)
        if cached is not None:
            return cached
        if word in (SOT, EOT):
            ids = (self.encoder[word],)
        else:
            ids = tuple(self.encoder[piece] for piece in self._merge(word))
        if len(self._cache) >= _CACHE_LIMIT:
            self._cache.clear()
        self._cache[word] = ids
        return ids

    def _merge(self, word: str) -> list[str]:
        # The end-of-word marker rides on the last symbol, so "a" inside a word and "a</w>" at
        # its end are different vocabulary entries.
        parts = list(word[:-1]) + [word[-1] + "</w>"]
        ranks = self.ranks
        while len(parts) > 1:
            best_rank = None
            best = None
            for pair in zip(parts, parts[1:]):
                rank = ranks.get(pair)
                if rank is not None and (best_rank is None or rank < best_rank):
                    best_rank, best = rank, pair
            if best is None:
                break
            first, second = best
            merged = []
            i = 0
            while i < len(parts):
                # Left to right, non-overlapping: "a a a" with merge (a, a) gives "aa a".
                if i + 1 < len(parts) and parts[i] == first and parts[i + 1] == second:
                    merged.append(first + second)
                    i += 2
                else:
                    merged.append(parts[i])
                    i += 1
            parts = merged
        return parts

    def encode(self, text: str) -> list[int]:
        """Ids of one text, without the start/end tokens and without truncation."""
        ids: list[int] = []
        symbols = self._byte_symbol
        for match in self._pattern.findall(self._clean_fn(text)):
            ids.extend(self.bpe("".join(symbols[b] for b in match.encode("utf-8"))))
        return ids

    def __call__(self, texts: str | Sequence[str], context_length: int | None = None) -> np.ndarray:
        """int64 K x L ids: start token, the text's ids, end token, zeros after.

        Text longer than L - 2 ids is cut, and the last kept position is overwritten with the end
        token: the text encoder pools at the end token (argmax of the ids), so it must be there.
        """
        length = self.context_length if context_length is None else check_context_length(context_length)
        batch = as_text_list(texts)
        out = np.zeros((len(batch), length), dtype=np.int64)
        for row, text in enumerate(batch):
            ids = [self.sot_token_id] + self.encode(text) + [self.eot_token_id]
            if len(ids) > length:
                ids = ids[:length]
                ids[-1] = self.eot_token_id
            out[row, : len(ids)] = ids
        return out

    def __repr__(self) -> str:
        return f"ClipTokenizer({str(self.vocab_path)!r}, context_length={self.context_length}, clean={self.clean!r})"


def _gunzip_bounded(fh, limit: int) -> bytes:
    """At most ``limit`` expanded bytes: a small file that expands to gigabytes is refused, not read."""
    data = fh.read(limit + 1)
    if len(data) > limit:
        raise ValueError(f"it expands to more than {limit >> 20} MiB")
    return data


def _read_merges(path: Path, content: bytes | None = None) -> list[tuple[str, str]]:
    if content is None and not path.is_file():
        raise RadaError(
            f"the BPE vocabulary file {path} does not exist",
            "copy the bundle again in full (it ships tokenizer/bpe_simple_vocab_16e6.txt.gz), or re-export it",
        )
    try:
        with gzip.open(io.BytesIO(content) if content is not None else path, "rb") as fh:
            lines = _gunzip_bounded(fh, MAX_VOCAB_TEXT_BYTES).decode("utf-8").split("\n")
    except (OSError, EOFError, UnicodeDecodeError, ValueError, zlib.error) as err:
        raise RadaError(
            f"the BPE vocabulary file {path} is not a readable gzip text file ({err})",
            "expected open_clip's bpe_simple_vocab_16e6.txt.gz; copy the bundle again or re-export it",
        ) from err
    available = len([line for line in lines[1 : _N_MERGES + 1] if line.strip()])
    if available != _N_MERGES:
        raise RadaError(
            f"the BPE vocabulary file {path} holds {available} merges, CLIP needs {_N_MERGES}",
            "expected open_clip's bpe_simple_vocab_16e6.txt.gz; copy the bundle again or re-export it",
        )
    merges = []
    for line in lines[1 : _N_MERGES + 1]:
        pair = tuple(line.split())
        if len(pair) != 2:
            raise RadaError(
                f"the BPE vocabulary file {path} has a malformed merge line {line!r}",
                "expected open_clip's bpe_simple_vocab_16e6.txt.gz; copy the bundle again or re-export it",
            )
        merges.append(pair)
    return merges


def load_tokenizer(bundle_path: str | Path | Any, entry: dict[str, Any]):
    """The tokenizer a bundle's manifest names (any kind of bundle/tokenizers.py: CLIP's BPE, a Hugging
    Face tokenizer.json...). ``bundle_path``: a folder, whose files are read confined to it, or a
    VerifiedBundle (bundle/verified.py), whose files are read as verified bytes."""
    read = getattr(bundle_path, "read", None)
    if read is None:
        read = _folder_reader(Path(bundle_path))
    return load_kind(entry, read)


def _folder_reader(bundle: Path) -> Callable[[str, int], bytes]:
    from .bundle.paths import confine

    def read(rel: str, max_bytes: int) -> bytes:
        try:
            path = confine(bundle, rel, "the tokenizer's file")
        except RadaError as err:
            raise RadaError(f"the manifest's tokenizer file {str(rel)[:120]!r} is not a path inside the bundle "
                            f"({err.problem})", err.fix) from None
        if not path.is_file():
            raise RadaError(f"the tokenizer file {path} does not exist",
                            "copy the bundle again in full (it ships its tokenizer/ folder), or re-export it")
        try:
            with open(path, "rb") as fh:
                data = fh.read(max_bytes + 1)
        except OSError as err:
            raise RadaError(f"the bundle's tokenizer file {rel} cannot be read ({err.strerror or err})",
                            "copy the bundle again in full, or re-export it") from None
        if len(data) > max_bytes:
            raise RadaError(f"the bundle's tokenizer file {rel} is larger than {max_bytes >> 20} MiB",
                            "re-export the bundle with `rada-export onnx`")
        return data

    return read
