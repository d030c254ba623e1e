"""TensorRT's log: one logger per process, and the messages of one call captured for its error message.

TensorRT keeps a single logger pointer for the whole process: a builder or runtime created while
another one is alive keeps using the first logger it was given ("TensorRT maintains only a single
logger pointer at any given time ... In order to use a new logger, first destroy all existing
builder, runner or refitter objects", TensorRT's warning, github.com/NVIDIA/TensorRT/issues/1475).
A logger per engine would therefore lose the messages of every engine but the first, and, once the
first engine is closed and its Python logger freed, leave TensorRT calling a freed object. So there
is one logger, kept for the life of the process (:func:`shared_logger`), and each call that wants
TensorRT's words for its error opens a :class:`LogCapture` on its own thread.
"""

from __future__ import annotations

import threading
from typing import Iterable

# TensorRT's ILogger.Severity values (INTERNAL_ERROR 0, ERROR 1, WARNING 2, INFO 3, VERBOSE 4).
ERROR_LEVEL = 1
WARNING_LEVEL = 2


class LogCapture:
    """The warnings and errors TensorRT logs while it is open (on its thread, plus those of TensorRT's own threads)."""

    def __init__(self, router: "LogRouter", keep: int):
        self.thread = threading.get_ident()
        self._router = router
        self._keep = keep
        self.messages: list[tuple[int, str]] = []

    def add(self, level: int, message: str) -> None:
        self.messages.append((level, message))
        del self.messages[:-self._keep]

    def errors(self) -> list[str]:
        return [m for level, m in self.messages if level <= ERROR_LEVEL]

    def warnings(self) -> list[str]:
        return [m for level, m in self.messages if level == WARNING_LEVEL]

    def clear(self) -> None:
        self.messages.clear()

    def __enter__(self) -> "LogCapture":
        return self

    def __exit__(self, *exc) -> None:
        self._router.release(self)


class LogRouter:
    """Sends each message to the captures open on the thread that logged it. Pure Python, thread-safe.

    A message from a thread with no capture open (TensorRT's own worker threads) goes to every open
    capture: better a stray line in an error than a lost one.
    """

    def __init__(self, keep: int = 200):
        self._keep = keep
        self._lock = threading.Lock()
        self._open: list[LogCapture] = []

    def capture(self) -> LogCapture:
        capture = LogCapture(self, self._keep)
        with self._lock:
            self._open.append(capture)
        return capture

    def release(self, capture: LogCapture) -> None:
        with self._lock:
            self._open = [c for c in self._open if c is not capture]

    def record(self, level: int, message: str) -> None:
        if level > WARNING_LEVEL:
            return
        thread = threading.get_ident()
        with self._lock:
            targets = [c for c in self._open if c.thread == thread] or list(self._open)
        for capture in targets:
            capture.add(level, message)


_LOCK = threading.Lock()
_LOGGERS: dict[int, object] = {}  # id(tensorrt module) -> its logger; never freed (TensorRT may hold it)


def shared_logger(trt):
    """The process's TensorRT logger (an ``ILogger``), made once and kept: pass it to every Builder and Runtime.

    ``shared_logger(trt).capture()`` opens a :class:`LogCapture` (a context manager).
    """
    with _LOCK:
        logger = _LOGGERS.get(id(trt))
        if logger is None:
            logger = _LOGGERS[id(trt)] = _make_logger(trt)
        return logger


def _make_logger(trt):
    class _Logger(trt.ILogger):
        def __init__(self):
            trt.ILogger.__init__(self)
            self.router = LogRouter()

        def log(self, severity, msg):  # noqa: D401 - TensorRT's callback, from any thread
            self.router.record(int(severity), str(msg))

        def capture(self) -> LogCapture:
            return self.router.capture()

    return _Logger()


def bullet_list(lines: Iterable[str], limit: int = 8) -> str:
    """The last ``limit`` lines as an indented list ("\\n  - ..." each) to append to an error; "" for none."""
    return "".join(f"\n  - {line.strip()}" for line in list(lines)[-limit:])


__all__ = ["LogCapture", "LogRouter", "bullet_list", "shared_logger"]
