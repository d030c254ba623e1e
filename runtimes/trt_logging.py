"""TensorRT's log, kept so that its recent warnings and errors can go into our error messages."""

from __future__ import annotations

from typing import Iterable


def make_logger(trt, keep: int = 200):
    """A TensorRT logger that keeps recent warnings and errors (to put in our error messages)."""

    class _Logger(trt.ILogger):
        def __init__(self):
            trt.ILogger.__init__(self)
            self.messages: list[tuple[int, str]] = []

        def log(self, severity, msg):  # noqa: D401 - TensorRT's callback
            level = int(severity)
            if level <= int(trt.ILogger.Severity.WARNING):
                self.messages.append((level, str(msg)))
                del self.messages[:-keep]

        def errors(self) -> list[str]:
            return [m for level, m in self.messages if level <= int(trt.ILogger.Severity.ERROR)]

        def warnings(self) -> list[str]:
            return [m for level, m in self.messages if level == int(trt.ILogger.Severity.WARNING)]

        def clear(self) -> None:
            self.messages.clear()

    return _Logger()


def bullet_list(lines: Iterable[str], limit: int = 8) -> str:
    """The last ``limit`` lines as an indented list ("\\n  - ..." each) to append to an error; "" for none."""
    return "".join(f"\n  - {line.strip()}" for line in list(lines)[-limit:])
