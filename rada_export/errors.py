"""Errors a user can act on.

Every error raised for bad input is a :class:`RadaError`: it names the problem and the fix, and
the CLI turns it into exit code 2 without a traceback. This module imports nothing heavy so that
the runtime can share it.

Library messages speak the caller's language, the request and config fields: a field named in the
text is written as a Python caller writes it (``repeats``, ``force=True``), never as a command-line
flag, and ``field`` says which field the problem is about. The CLI, which knows which of its
options fills each field, shows the flag instead (cli/flags.py).
"""

from __future__ import annotations


class RadaError(Exception):
    """Bad input or environment: says what is wrong and how to fix it.

    ``field``: the request or config field the problem is about (``"out"``, ``"max_batch"``), or
    None when the problem is not about one value the caller passed.
    """

    exit_code = 2

    def __init__(self, problem: str, fix: str | None = None, *, field: str | None = None):
        self.problem = problem
        self.fix = fix
        self.field = field
        super().__init__(problem if fix is None else f"{problem}\n  fix: {fix}")


class VerificationError(Exception):
    """A produced artifact does not meet its accuracy thresholds (exit code 1).

    ``report`` carries the figures, so that callers can still print the table.
    """

    exit_code = 1

    def __init__(self, report, message: str = "parity below the thresholds"):
        self.report = report
        super().__init__(message)
