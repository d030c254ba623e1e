"""The CLI reference page (docs/cli.md), written from the Typer app itself.

    python -m rada_export.cli.reference > docs/cli.md

The page is plain Markdown built from the commands' own help and options, never from a terminal
rendering of ``--help``: its text must not depend on the terminal's width or colours, so the test
that compares it with docs/cli.md gives the same answer everywhere.
"""

from __future__ import annotations

import inspect
import re
import sys
import typing
from pathlib import Path
from typing import Any

REGENERATE = "python -m rada_export.cli.reference > docs/cli.md"
PROGRAM = "rada-export"
EXAMPLE = "Example: "

# Python annotations as the page names them; anything else shows as VALUE.
TYPE_LABELS = {Path: "PATH", str: "TEXT", int: "INTEGER", float: "FLOAT"}


def render(app: Any = None) -> str:
    """The whole reference page as Markdown; deterministic for one set of commands."""
    from typer.main import get_command

    if app is None:
        from .app import app
    group = get_command(app)
    out = [
        "# CLI reference",
        "",
        f"<!-- Generated from the Typer app by `{REGENERATE}`. Edit the commands' help in cli/, then regenerate. -->",
        "",
        _prose(group.help or ""),
        "",
        f"Every command takes `--help`. `{PROGRAM} --version` prints the version. Bad input exits 2 with one "
        "`error:` line and one `fix:` line; a failed check (parity, thresholds) exits 1.",
        "",
        " · ".join(f"[{name}](#{name})" for name in group.commands),
        "",
    ]
    for name, command in group.commands.items():
        out += _command(name, command)
    return "\n".join(out).rstrip("\n") + "\n"


def _command(name: str, command: Any) -> list[str]:
    hints = _type_hints(command)
    arguments = [p for p in command.params if not _is_option(p) and not getattr(p, "hidden", False)]
    options = [p for p in command.params if _is_option(p) and not getattr(p, "hidden", False)]
    usage = " ".join([PROGRAM, name, "[OPTIONS]"] + [_argument_usage(p) for p in arguments])
    out = [f"## {name}", "", "```text", usage, "```", ""]
    for paragraph in _paragraphs(command.help or ""):
        if paragraph.startswith(EXAMPLE):
            out += ["Example:", "", "```bash", paragraph[len(EXAMPLE):], "```", ""]
        else:
            out += [_prose(paragraph), ""]
    if arguments:
        out += ["| argument | value | help |", "| --- | --- | --- |"]
        out += [f"| `{p.name.upper()}` | {_value(p, hints)} | {_cell(_help(p))} |" for p in arguments]
        out.append("")
    if options:
        out += ["| option | value | default | help |", "| --- | --- | --- | --- |"]
        out += [f"| {_names(p)} | {_value(p, hints)} | {_default(p)} | {_cell(_help(p))} |" for p in options]
        out.append("")
    return out


def _is_option(param: Any) -> bool:
    return any(opt.startswith("-") for opt in param.opts)


def _paragraphs(text: str) -> list[str]:
    """Docstring paragraphs, each joined into one line (docstrings wrap at whatever width their author used)."""
    text = inspect.cleandoc(text)
    return [" ".join(line.strip() for line in block.splitlines()) for block in re.split(r"\n\s*\n", text) if block.strip()]


def _prose(text: str) -> str:
    """Markdown-safe prose: angle brackets outside code spans would read as HTML tags."""
    parts = re.split(r"(`[^`]*`)", " ".join(text.split()))
    return "".join(p if p.startswith("`") else p.replace("<", "&lt;").replace(">", "&gt;") for p in parts)


def _cell(text: str) -> str:
    return _prose(text).replace("|", "\\|")


def _help(param: Any) -> str:
    return getattr(param, "help", None) or ""


def _names(param: Any) -> str:
    names = " / ".join(f"`{opt}`" for opt in param.opts[:1] + list(getattr(param, "secondary_opts", [])))
    short = [f"`{opt}`" for opt in param.opts[1:]]
    return ", ".join([names] + short)


def _type_hints(command: Any) -> dict[str, Any]:
    """The command function's annotations, through the wrappers Typer and the error handler put around it."""
    callback = getattr(command, "callback", None)
    if callback is None:
        return {}
    try:
        return typing.get_type_hints(inspect.unwrap(callback))
    except Exception:  # an annotation this module cannot resolve: the page says VALUE
        return {}


def _base_type(annotation: Any) -> tuple[Any, bool]:
    """(element type, repeatable) with Optional[...] and List[...] taken off."""
    repeatable = False
    while typing.get_origin(annotation) in (typing.Union, list):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        repeatable = repeatable or typing.get_origin(annotation) is list
        annotation = args[0] if len(args) == 1 else annotation
        if len(args) != 1:
            break
    return annotation, repeatable


def _value(param: Any, hints: dict[str, Any]) -> str:
    if getattr(param, "is_flag", False):
        return "flag"
    annotation, repeatable = _base_type(hints.get(param.name))
    label = TYPE_LABELS.get(annotation, "VALUE")
    low, high = getattr(param, "min", None), getattr(param, "max", None)
    if low is not None:
        label += f" ≥ {low}"
    if high is not None:
        label += f" ≤ {high}"
    if _is_option(param):
        return label + (", repeatable" if repeatable or getattr(param, "multiple", False) else "")
    return label + ("..." if getattr(param, "nargs", 1) == -1 else "")


def _argument_usage(param: Any) -> str:
    name = param.name.upper() + ("..." if getattr(param, "nargs", 1) == -1 else "")
    return name if param.required else f"[{name}]"


def _default(param: Any) -> str:
    if param.required:
        return "required"
    default = param.default
    if getattr(param, "is_flag", False) and isinstance(default, bool):
        first, *rest = param.opts[:1] + list(getattr(param, "secondary_opts", []))
        if rest:  # an on/off pair: name the one that applies
            return f"`{first if default else rest[0]}`"
        return "on" if default else "off"
    if default is None or default == [] or default == ():
        return "-"
    if isinstance(default, Path):
        default = default.as_posix()
    return f"`{default}`"


def main() -> None:
    sys.stdout.write(render())


if __name__ == "__main__":
    main()
