"""What every command shares: the console, error handling, and small report helpers."""

from __future__ import annotations

import functools
import json
import math
import sys
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import typer
from typer.core import TyperCommand
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from rada_export.errors import RadaError, VerificationError
from rada_export.progress import Reporter

from .flags import CommandFlags

# Tables stay readable in logs and pipes, where rich would otherwise assume 80 columns.
console = Console(width=None if sys.stdout.isatty() else 120)
err_console = Console(stderr=True, soft_wrap=True)  # error text greps as one line


def handle_errors(fn: Callable | None = None, *, fields: Mapping[str, str] | None = None, json_lines: bool = False) -> Callable:
    """Turns library errors into the CLI's contract: a message and exit 2 (bad input) or 1 (failed check).

    The message names this command's flags where the library names request fields (cli/flags.py);
    ``fields`` maps the fields whose flag is not ``--`` + the field's name with dashes
    (``@handle_errors(fields={"samples": "--calib-samples"})``). With ``--json`` the error is also
    printed on stdout as JSON; ``json_lines``: as one compact line, flushed, for commands whose
    ``--json`` output is one object per line (a reader parses every line, the error's included).
    """
    if fn is None:
        return functools.partial(handle_errors, fields=fields, json_lines=json_lines)
    flags = CommandFlags(fn, fields)

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except RadaError as err:
            problem, fix = flags.message(err)
            if kwargs.get("json_out"):  # a --json caller parses stdout: it gets the error as JSON too
                error = {"error": problem, "fix": fix, "exit_code": err.exit_code}
                if json_lines:
                    print_json_line(error)
                else:
                    print_json(error)
            # Messages hold literal brackets ("rada-export[trt]"): escape them from rich's markup.
            err_console.print(f"[bold red]error:[/bold red] {escape(problem)}")
            if fix:
                err_console.print(f"[bold]fix:[/bold] {escape(fix)}")
            raise typer.Exit(code=err.exit_code) from None
        except VerificationError as err:
            err_console.print(f"[bold red]verification failed:[/bold red] {err}")
            raise typer.Exit(code=err.exit_code) from None

    wrapper.field_flags = dict(fields or {})
    return wrapper


def reporter(quiet: bool = False) -> Reporter:
    return Reporter(enabled=not quiet)


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(finite_json(data), indent=2, default=str, allow_nan=False) + "\n")


def print_json_line(data: Any) -> None:
    """One compact JSON object on one line, flushed: a reading process gets it at once."""
    sys.stdout.write(json.dumps(finite_json(data), default=str, allow_nan=False) + "\n")
    sys.stdout.flush()


def finite_json(data: Any) -> Any:
    """``data`` with every non-finite float as null: JSON has no NaN or Infinity, and a reader's
    parser would refuse the whole document for one of them."""
    if isinstance(data, float):
        return data if math.isfinite(data) else None
    if isinstance(data, dict):
        return {k: finite_json(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [finite_json(v) for v in data]
    if is_dataclass(data) and not isinstance(data, type):
        return finite_json(asdict(data))
    if hasattr(data, "dtype") and hasattr(data, "tolist"):  # numpy scalars and arrays
        return finite_json(data.tolist())
    return data


def make_table(title: str, columns: list[str], rows: list[list[Any]]) -> Table:
    table = Table(title=title)
    for col in columns:
        table.add_column(col)
    for row in rows:
        table.add_row(*[fmt(v) for v in row])
    return table


def fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if value == 0 or 1e-3 <= abs(value) < 1e5:
            return f"{value:.4f}".rstrip("0").rstrip(".") if abs(value) >= 1 else f"{value:.6f}"
        return f"{value:.3e}"
    return str(value)


def pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f} %"


def expand_folders(paths: Sequence[Path], flag: str = "--images") -> list[Path]:
    """Each folder replaced by the images found in it (recursively); other paths are kept as given,
    for the caller's own check of files."""
    from rada_export.errors import RadaError
    from rada_export.images import find_images

    files: list[Path] = []
    for item in paths:
        if item.is_dir():
            found = find_images(item)
            if not found:
                raise RadaError(f"{flag}: folder {item} holds no images", "pass a folder of JPEG/PNG/WebP/BMP files")
            files += found
        else:
            files.append(item)
    return files


def image_files(images: Sequence[Path]) -> list[Path]:
    """The files named, and the images found in the folders named (recursively), in that order."""
    from rada_export.errors import RadaError
    from rada_export.images import find_images

    files: list[Path] = []
    for item in images:
        if item.is_dir():
            files += find_images(item)
        elif item.is_file():
            files.append(item)
        else:
            raise RadaError(f"image {item} does not exist", "pass existing image files or folders")
    if not files:
        raise RadaError("no image files found in the given folders", "pass JPEG/PNG/WebP/BMP files")
    return files


class Command(TyperCommand):
    """Typer's command with its on/off switches shown without a value type: a switch takes no value,
    and ``<bool>`` beside ``--force`` or ``--help`` reads as if it did."""

    def get_params(self, ctx):
        params = super().get_params(ctx)
        for param in params:
            if getattr(param, "is_flag", False) and not getattr(param, "count", False) and param.metavar is None:
                param.metavar = ""
        return params
