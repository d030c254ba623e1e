"""Library errors in the CLI's words: the flag of the option that filled each request field.

The library names request and config fields as a Python caller writes them (``max_batch``,
``force=True``, ``repeats=20``; rada_export/errors.py). A command knows which of its options
fills which field: by default the field ``max_batch`` comes from ``--max-batch``, and a command
whose option is spelled otherwise says so (``{"samples": "--calib-samples"}``). Every flag is
looked up among the options the command function declares before it is printed, so a wrong name
leaves the library's wording in place rather than pointing at an option that does not exist.
"""

from __future__ import annotations

import inspect
import re
import shlex
from dataclasses import dataclass
from typing import Callable, Mapping

from typer.models import OptionInfo

from rada_export.errors import RadaError

# name=value as the library writes a keyword: True/False, a quoted string, a list, or a bare word
# (a bare word does not take a sentence's closing full stop or comma).
KEYWORD = re.compile(r"\b([a-z][a-z0-9_]*)=(True|False|'[^']*'|\"[^\"]*\"|\[[^\]]*\]|[^\s,;()\[\]'\"]*[^\s,;()\[\]'\".])")


@dataclass(frozen=True)
class Option:
    """One option as declared: its on-switches and off-switches (``--x/--no-x``), and whether it is a switch."""

    on: tuple[str, ...]
    off: tuple[str, ...]
    is_flag: bool


def declared_options(command: Callable) -> dict[str, Option]:
    """Every long flag of a Typer command function, read from its ``typer.Option`` declarations."""
    options: dict[str, Option] = {}
    for param in inspect.signature(command).parameters.values():
        info = param.default
        if not isinstance(info, OptionInfo):
            continue
        decls = [d for decl in info.param_decls or () for d in [decl.split("/", 1)]]
        on = tuple(d[0].strip() for d in decls if d[0].strip().startswith("--"))
        off = tuple(d[1].strip() for d in decls if len(d) == 2 and d[1].strip().startswith("--"))
        option = Option(on, off, isinstance(info.default, bool))
        options.update({flag: option for flag in (*on, *off)})
    return options


class CommandFlags:
    """The flags of one command's options, and the field each one fills."""

    def __init__(self, command: Callable, overrides: Mapping[str, str] | None = None):
        self.options = declared_options(command)
        self.overrides = dict(overrides or {})

    def flag(self, field: str | None) -> str | None:
        """The flag that fills ``field`` (an override key may also be ``field=value``), if this command has it."""
        if not field:
            return None
        for candidate in (self.overrides.get(field), "--" + field.replace("_", "-")):
            if candidate in self.options:
                return candidate
        return None

    def keyword(self, name: str, value: str) -> str | None:
        """``name=value`` as this command's flags write it, or None when no option of it fits."""
        exact = self.flag(f"{name}={value}")
        if exact is not None:
            return exact
        flag = self.flag(name)
        if flag is None:
            return None
        option = self.options[flag]
        if value in ("True", "False"):
            if not option.is_flag:
                return None
            if value == "True":
                return flag if flag in option.on else None
            return option.off[0] if option.off else None
        if option.is_flag:
            return None
        return f"{flag} {_shell_value(value)}"

    def text(self, text: str | None) -> str | None:
        if text is None:
            return None
        return KEYWORD.sub(lambda m: self.keyword(m.group(1), m.group(2)) or m.group(0), text)

    def message(self, err: RadaError) -> tuple[str, str | None]:
        """(problem, fix) with this command's flags in place of the fields they fill."""
        problem = err.problem
        flag = self.flag(err.field)
        if flag is not None and re.match(rf"{re.escape(err.field)}\b(?!=)", problem):
            problem = flag + problem[len(err.field):]  # "max_batch must be ..." -> "--max-batch must be ..."
        problem = self.text(problem)
        if flag is not None and not re.search(rf"{re.escape(flag)}\b", problem):
            problem = f"{flag}: {problem}"
        return problem, self.text(err.fix)


def _shell_value(value: str) -> str:
    """A keyword's value as typed in a shell: lists comma-joined, quotes only where the shell needs them."""
    if value.startswith("[") and value.endswith("]"):
        value = ",".join(item.strip().strip("'\"") for item in value[1:-1].split(",") if item.strip())
    elif len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        value = value[1:-1]
    return value if re.fullmatch(r"[\w.,:/+@%=-]+", value) else shlex.quote(value)


def check_overrides(command: Callable, overrides: Mapping[str, str]) -> list[str]:
    """Overrides that name a flag ``command`` does not have (the CLI's tests require none)."""
    known = declared_options(command)
    return [f"{field} -> {flag}" for field, flag in overrides.items() if flag not in known]
