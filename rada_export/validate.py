"""Shared checks of user input, so that every command and the library refuse the same things the same way.

Each check raises a :class:`RadaError` naming the problem and the fix (the CLI turns it into one
line and exit code 2). They run before any work starts: nothing is written, trained or exported
when an option is bad. ``field`` is the name of the request or config field being checked, as a
Python caller writes it (``max_batch``); the error carries it, so that the CLI can name its flag
instead. This module imports only the standard library and the runtime's class-name check (itself
standard library only), so the torch-free runtime shares it.
"""

from __future__ import annotations

import math
import numbers
import os
import string
import tempfile
from pathlib import Path
from typing import Any, Sequence

from .errors import RadaError
from .runtimes import class_names

# Opsets the exporters write: 17 has LayerNormalization as one node; torch.onnx's TorchScript
# exporter stops at 20 and the dynamo one at 23 (torch.onnx._constants in torch 2.14:
# ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET, ONNX_MAX_OPSET).
MIN_OPSET = 17
MAX_OPSET = {"torchscript": 20, "dynamo": 23}

# The head's three h x K x K attention maps per image (FP32) must stay under this; warn from WARN_CLASSES.
MAX_ATTENTION_BYTES = 1 << 30
WARN_CLASSES = 1000

PLOT_SUFFIXES = (".png", ".svg", ".pdf", ".jpg", ".jpeg")


# -- numbers ---------------------------------------------------------------------------------------


def integer(field: str, value: Any, minimum: int | None = None, maximum: int | None = None) -> int:
    """An int (not a bool, not 2.5) within [minimum, maximum]."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise RadaError(f"{field} must be a whole number, got {value!r}", "pass a whole number", field=field)
    value = int(value)
    _in_range(field, value, minimum, maximum)
    return value


def number(field: str, value: Any, minimum: float | None = None, maximum: float | None = None,
           positive: bool = False) -> float:
    """A finite real within [minimum, maximum] (above 0 when ``positive``)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(float(value)):
        raise RadaError(f"{field} must be a finite number, got {value!r}", "pass a finite number", field=field)
    value = float(value)
    if positive and value <= 0:
        raise RadaError(f"{field} must be positive, got {value:g}", "pass a number above 0", field=field)
    _in_range(field, value, minimum, maximum)
    return value


def _in_range(field: str, value: float, minimum: float | None, maximum: float | None) -> None:
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        lo = "" if minimum is None else f"at least {_fmt(minimum)}"
        hi = "" if maximum is None else f"at most {_fmt(maximum)}"
        bounds = " and ".join(b for b in (lo, hi) if b)
        raise RadaError(f"{field} must be {bounds}, got {_fmt(value)}", f"use a value {bounds}", field=field)


def _fmt(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def choice(field: str, value: Any, allowed: Sequence[str]) -> str:
    if value not in allowed:
        raise RadaError(f"{field} {value!r} is not one of {', '.join(allowed)}", f"use one of: {', '.join(allowed)}",
                        field=field)
    return value


def opset(value: Any, exporter: str = "torchscript") -> int:
    """An opset the chosen exporter writes (the exporter itself is checked first)."""
    choice("exporter", exporter, tuple(MAX_OPSET))
    return integer("opset", value, MIN_OPSET, MAX_OPSET[exporter])


# -- prompts and classes ---------------------------------------------------------------------------


def template(text: Any) -> str:
    """A prompt template with exactly one ``{}`` and no other format field ('{0}', '{name}', a lone '{')."""
    if not isinstance(text, str):
        raise RadaError(f"prompt template {text!r} is not a string", "write templates like 'a photo of a {}.'",
                        field="templates")
    try:
        fields = [f for _, f, spec, conv in string.Formatter().parse(text) if f is not None or spec or conv]
    except ValueError as err:  # a lone '{' or '}'
        raise RadaError(f"prompt template {text!r} is malformed ({err})",
                        "write exactly one '{}' for the class name; double other braces as '{{' and '}}'",
                        field="templates") from None
    if fields != [""]:
        raise RadaError(f"prompt template {text!r} has {len(fields)} placeholder(s); it needs exactly one '{{}}'",
                        "write templates like 'a photo of a {}.' (double literal braces as '{{' and '}}')",
                        field="templates")
    token = class_names.reserved_token(text)
    if token is not None:  # before the name, it would give every class the same text features
        raise RadaError(f"prompt template {text!r} holds {token!r}, a special token of the CLIP tokenizer: the text "
                        "encoder reads nothing after it", f"remove {token!r} from the template", field="templates")
    return text


def templates(values: Sequence[str] | None, default: Sequence[str]) -> list[str]:
    values = list(values) if values else list(default)
    return [template(t) for t in values]


def class_count(num_classes: int, num_heads: int) -> str | None:
    """Refuses class counts whose head attention would not fit; returns a warning for large ones."""
    if num_classes < 2:
        raise RadaError(f"{num_classes} class name(s) given: a classifier needs at least two classes",
                        "give at least two class names (comma-separated, or a file with one name a line)")
    needed = 3 * num_heads * num_classes * num_classes * 4
    if needed > MAX_ATTENTION_BYTES:
        raise RadaError(
            f"{num_classes} classes need {needed / 2**30:.1f} GiB of head attention maps per image (FP32); "
            f"the limit is {max_classes(num_heads)} classes",
            f"use at most {max_classes(num_heads)} classes (split the label set, or pre-filter with zero-shot CLIP)",
        )
    if num_classes >= WARN_CLASSES:
        return (f"{num_classes} classes: the head's attention maps take {needed / 2**20:.0f} MiB per image and the "
                f"head adds roughly {100 * num_classes / 5000:.0f} % to a ViT-B/16 image pass")
    return None


def duplicates(names: Sequence[str]) -> list[str]:
    """Names that another name equals to the tokenizer: ignoring case and Unicode composition (linear:
    10,000 names must not take minutes)."""
    return class_names.duplicates(names)


def max_classes(num_heads: int) -> int:
    return int((MAX_ATTENTION_BYTES / (3 * num_heads * 4)) ** 0.5)


def distinct_prompts(names: Sequence[str], tokens: Any, num_templates: int, context_length: int) -> None:
    """Refuses classes whose prompts tokenize identically: CLIP truncates to ``context_length`` tokens,
    so two long names that differ only past that point would get the same text features.

    ``tokens`` is the (K * templates) x context array the tokenizer made of the prompts, class-major.
    """
    rows = [bytes(memoryview(_contiguous(tokens[i]))) for i in range(len(tokens))]
    seen: dict[tuple[bytes, ...], str] = {}
    for k, name in enumerate(names):
        key = tuple(rows[k * num_templates : (k + 1) * num_templates])
        if key in seen:
            raise RadaError(
                f"classes {_short(seen[key])!r} and {_short(name)!r} are the same in their first {context_length} "
                "tokens (CLIP reads no further), so the model cannot tell them apart",
                "shorten the class names so that they differ early",
            )
        seen[key] = name


def _contiguous(row: Any) -> Any:
    import numpy as np

    return np.ascontiguousarray(np.asarray(row))


def _short(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def is_existing_file(value: str | os.PathLike) -> bool:
    """Path.is_file that treats names the OS cannot even look up (too long, NUL) as not files."""
    try:
        return Path(value).is_file()
    except (OSError, ValueError):
        return False


def looks_like_path(value: str) -> bool:
    """A class list string meant as a file: it ends in .txt/.csv/.lst or holds a path separator and no comma."""
    text = str(value).strip()
    return text.lower().endswith((".txt", ".csv", ".lst", ".names")) or (
        "," not in text and (os.sep in text or (os.altsep or os.sep) in text))


def existing_files(paths: Sequence[str | os.PathLike], field: str) -> None:
    for path in paths:
        if not is_existing_file(path):
            raise RadaError(f"{field} {path} is not an existing file", "check the path", field=field)


def readable_images(paths: Sequence[str | os.PathLike], field: str) -> None:
    """Existing files that Pillow can identify (a cheap header check, before minutes of export)."""
    from PIL import Image

    existing_files(paths, field)
    for path in paths:
        try:
            with Image.open(path) as image:
                image.verify()
        except Exception as err:  # Pillow raises many types for corrupt files
            raise RadaError(f"{field} {path} is not a readable image ({type(err).__name__})",
                            "pass JPEG, PNG, WebP or BMP files", field=field) from None


# -- output paths ----------------------------------------------------------------------------------


def output_folder(path: str | os.PathLike, field: str = "out") -> Path:
    """Refuses an output folder that is the current folder, one of its parents, the home folder or
    the root: a bundle folder is replaced as a whole, so it must be a folder of its own."""
    path = Path(path)
    resolved = path.expanduser().resolve()
    cwd = Path.cwd().resolve()
    home = Path.home().resolve()
    if resolved == cwd or cwd.is_relative_to(resolved) or resolved in (home, Path(resolved.anchor)):
        raise RadaError(f"output folder {path} is {_what(resolved, cwd, home)}, which cannot be an output folder",
                        f"name a folder of its own, e.g. {field}='bundle'", field=field)
    if resolved.exists() and not resolved.is_dir():
        raise RadaError(f"output folder {path} is a file", "give a folder path", field=field)
    writable(resolved, field)
    return path


def output_file(path: str | os.PathLike, field: str, suffixes: Sequence[str] = (), force: bool = False,
                what: str = "output file") -> Path:
    """A file the tool will write: not a folder, the expected suffix, in a folder it can write to, and
    not a file that exists already unless ``force`` (the user's files are never replaced unasked)."""
    path = Path(path)
    if path.is_dir() or str(path).endswith((os.sep, "/")):
        raise RadaError(f"output file {path} is a folder", "give a file name" +
                        (f" such as {path / ('out' + suffixes[0])}" if suffixes else ""), field=field)
    if suffixes and path.suffix.lower() not in suffixes:
        raise RadaError(f"output file {path} has suffix {path.suffix or '(none)'!r}",
                        f"end the file name in one of {', '.join(suffixes)}", field=field)
    writable(path.expanduser().resolve().parent, field)
    if path.exists() and not force:
        raise RadaError(f"{what} {path} already exists", "pass force=True to overwrite it, or choose another output file",
                        field=field)
    return path


def _what(resolved: Path, cwd: Path, home: Path) -> str:
    if resolved == cwd:
        return "the current folder"
    if resolved == home:
        return "the home folder"
    if resolved == Path(resolved.anchor):
        return "the root folder"
    return "a parent of the current folder"


def writable(folder: Path, field: str) -> None:
    """Checks that the nearest existing folder on the way to ``folder`` takes a new file, by making one
    (permission bits do not tell: root ignores them, a read-only mount ignores them too)."""
    probe = folder
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir():
        raise RadaError(f"{probe} is a file, so {folder} cannot be made", "give a path under a folder", field=field)
    try:
        fd, name = tempfile.mkstemp(dir=probe, prefix=".rada-export-write-check-")
    except OSError as err:
        raise RadaError(f"cannot write in {probe} ({err.strerror or err})",
                        f"make {probe} writable, or choose another path", field=field) from None
    os.close(fd)
    os.unlink(name)
