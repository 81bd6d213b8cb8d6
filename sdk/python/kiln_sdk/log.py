"""Log through the host's tracing, tagged with the plugin's name.

In a component these functions call the WIT ``kiln:plugin/log`` import (the
adapter in :mod:`kiln_sdk.component` installs it as the sink); natively, in
tests, they write ``[level] message`` to stderr, or to whatever
:func:`set_sink` installed. Logging never fails and never changes a decision,
so it is safe to call from ``handle`` and ``apply``.
"""

import enum
import io
import sys
from typing import Callable


class Level(enum.IntEnum):
    """How important a message is; the values are the WIT enum's ordinals."""

    TRACE = 0
    DEBUG = 1
    INFO = 2
    WARN = 3
    ERROR = 4


Sink = Callable[[Level, str], None]


def _stderr_sink(level: Level, message: str) -> None:
    print(f"[{level.name.lower()}] {message}", file=sys.stderr)


_sink: Sink = _stderr_sink


def set_sink(sink: Sink) -> Sink:
    """Send every log call to ``sink``; returns the sink it replaces."""
    global _sink
    previous = _sink
    _sink = sink
    return previous


def log(level: Level, message: str) -> None:
    """Log ``message`` at ``level``."""
    _sink(Level(level), str(message))


class LogWriter(io.TextIOBase):
    """A text stream that logs each complete line at ``level``.

    The component adapter puts one in place of ``sys.stdout`` and
    ``sys.stderr``: a component built with ``--stub-wasi`` has no stdio, and
    writing to it (``print``) would trap.
    """

    def __init__(self, level: Level) -> None:
        super().__init__()
        self._level = level
        self._pending = ""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        lines = (self._pending + text).split("\n")
        self._pending = lines.pop()
        for line in lines:
            log(self._level, line)
        return len(text)

    def flush(self) -> None:
        if self._pending:
            pending, self._pending = self._pending, ""
            log(self._level, pending)


def trace(message: str) -> None:
    log(Level.TRACE, message)


def debug(message: str) -> None:
    log(Level.DEBUG, message)


def info(message: str) -> None:
    log(Level.INFO, message)


def warn(message: str) -> None:
    log(Level.WARN, message)


def error(message: str) -> None:
    log(Level.ERROR, message)
