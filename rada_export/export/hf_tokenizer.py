"""open_clip's Hugging Face tokenizers (SigLIP, SigLIP2, ...) written into a bundle as tokenizer.json.

open_clip tokenizes these families with ``transformers.AutoTokenizer`` (a fast tokenizer): the
``tokenizers`` library underneath reads the same tokenizer.json without torch or transformers, so the
device can tokenize new class names (runtimes/hf_tokenizer.py). What open_clip's ``HFTokenizer``
adds around it is recorded beside the file: the text cleaning, the context length, padding to it
with the pad token, and the optional stripping of the separator token.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import RadaError
from ..runtimes.bundle.tokenizers import HF_TOKENIZER_FILE as FILE
from ..runtimes.bundle.tokenizers import KIND_HF

__all__ = ["FILE", "KIND_HF", "write_hf_tokenizer"]


def _clean_mode(model_name: str) -> str:
    import open_clip

    cfg = open_clip.get_model_config(model_name) or {}
    return (cfg.get("text_cfg", {}).get("tokenizer_kwargs") or {}).get("clean", "whitespace")


def write_hf_tokenizer(tokenizer: Any, model_name: str, root: Path) -> dict[str, Any]:
    """Writes tokenizer.json into the bundle; returns the manifest's tokenizer entry."""
    if getattr(tokenizer, "tokenizer_mode", "") not in ("", None):
        raise RadaError(f"{model_name}'s tokenizer mode {tokenizer.tokenizer_mode!r} is not supported by the runtime",
                        "export with a model whose tokenizer uses open_clip's standard mode")
    backend = getattr(tokenizer.tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise RadaError(f"{model_name}'s tokenizer is not a fast (tokenizers-backed) tokenizer",
                        "install a transformers version that loads it as a fast tokenizer")
    target = root / FILE
    target.parent.mkdir(parents=True, exist_ok=True)
    backend.save(str(target))
    hf = tokenizer.tokenizer
    pad_id = hf.pad_token_id if hf.pad_token_id is not None else 0
    return {
        "kind": KIND_HF,
        "file": FILE,
        "context_length": int(tokenizer.context_length),
        "clean": _clean_mode(model_name),
        "pad_id": int(pad_id),
        "pad_token": hf.pad_token,
        "strip_sep_token": bool(tokenizer.strip_sep_token),
        "sep_id": hf.sep_token_id,
    }
