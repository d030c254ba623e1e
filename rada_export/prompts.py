"""Class names and prompt templates, and the text features CLIP makes of them."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from . import validate
from .errors import RadaError
from .runtimes.class_names import check_class_names

DEFAULT_TEMPLATES: tuple[str, ...] = ("a photo of a {}.",)


def parse_class_names(spec: Sequence[str] | str | Path | None) -> list[str]:
    """Class names from text files (one per line) or comma-separated strings; checks emptiness and duplicates.

    Each string that names an existing file is read as such a file; a string that looks like a
    path (ends in .txt, or holds a path separator and no comma) but names no file is an error; any
    other string is a comma-separated list (use a file for names that hold commas).
    """
    if spec is None:
        raise RadaError("no class names given", "pass classes='classes.txt' (one name a line) or classes='cat,dog'",
                        field="classes")
    items = [spec] if isinstance(spec, (str, Path)) else list(spec)
    names = [n for item in items for n in _expand(item)]
    names = [n.strip() for n in names if n.strip()]
    return validate_class_names(names)


def _expand(item: str | Path) -> list[str]:
    if validate.is_existing_file(item):
        try:
            # utf-8-sig: a byte order mark (Windows editors write one) is not part of the first name.
            return Path(item).read_text(encoding="utf-8-sig").splitlines()
        except (OSError, UnicodeDecodeError) as err:
            raise RadaError(f"class file {str(item)!r} is not readable UTF-8 text ({err})",
                            "pass a UTF-8 text file, one class name a line", field="classes") from None
    if isinstance(item, Path) or validate.looks_like_path(str(item)):
        raise RadaError(f"class file {str(item)!r} does not exist",
                        "pass an existing file (one class name a line), or the names themselves: classes='cat,dog'",
                        field="classes")
    return str(item).split(",")


def validate_class_names(names: Sequence[str]) -> list[str]:
    """The names, stripped, if every way they travel (tokenizer, classes.txt, manifest) keeps them
    distinct and intact; a RadaError naming the first problem otherwise (runtimes/class_names.py)."""
    return check_class_names(names)


def validate_templates(templates: Sequence[str] | None) -> list[str]:
    """The templates (default: DEFAULT_TEMPLATES), each with exactly one '{}' placeholder."""
    return validate.templates(templates, DEFAULT_TEMPLATES)


def text_features(clip, class_names: Sequence[str], templates: Sequence[str] | None = None, batch_size: int = 256):
    """K x D L2-normalised class embeddings; several templates average their normalised embeddings."""
    import torch

    templates = validate_templates(templates)
    class_names = validate_class_names(class_names)
    prompts = [t.format(name) for name in class_names for t in templates]
    tokens = clip.tokenizer(prompts)
    validate.distinct_prompts(class_names, tokens.numpy(), len(templates), clip.context_length)
    chunks = []
    with torch.no_grad():
        for start in range(0, len(prompts), batch_size):
            emb = clip.model.encode_text(tokens[start : start + batch_size])
            chunks.append(emb / emb.norm(dim=-1, keepdim=True))
        per_prompt = torch.cat(chunks).view(len(class_names), len(templates), -1)
        mean = per_prompt.mean(dim=1)
        return mean / mean.norm(dim=-1, keepdim=True)
