"""Errors a user can act on.

Every error raised for bad input is a :class:`RadaError`: it names the problem and the fix, and
the CLI turns it into exit code 2 without a traceback. This module imports nothing heavy so that
the runtime can share it.
"""

from __future__ import annotations


class RadaError(Exception):
    """Bad input or environment: says what is wrong and how to fix it."""

    exit_code = 2

    def __init__(self, problem: str, fix: str | None = None):
        self.problem = problem
        self.fix = fix
        super().__init__(problem if fix is None else f"{problem}\n  fix: {fix}")


class VerificationError(Exception):
    """A produced artifact does not meet its accuracy thresholds (exit code 1).

    ``report`` carries the figures, so that callers can still print the table.
    """

    exit_code = 1

    def __init__(self, report, message: str = "parity below the thresholds"):
        self.report = report
        super().__init__(message)
