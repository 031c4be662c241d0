"""Warnings of both sides go through `logging`, under the `pipeline` and `trainer` loggers, so a
program that imports them can route, raise or silence them. By default each is one line on stderr,
`warning: <message>`, as the commands always printed them: `get_logger` installs that handler once
per process (in a command, a test or a DataLoader worker alike)."""
from __future__ import annotations

import logging
import sys

PACKAGES = ("pipeline", "trainer")


class _StderrLines(logging.StreamHandler):
    """`<level>: <message>` on the `sys.stderr` of the moment (a redirected or captured stream)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):   # StreamHandler.__init__ sets it; the property always answers sys.stderr
        pass

    def format(self, record: logging.LogRecord) -> str:
        return f"{record.levelname.lower()}: {record.getMessage()}"


def print_warnings() -> None:
    """Route the project's warnings to stderr as `warning: …` lines (once per process)."""
    for name in PACKAGES:
        logger = logging.getLogger(name)
        if not any(isinstance(h, _StderrLines) for h in logger.handlers):
            logger.addHandler(_StderrLines())
            logger.propagate = False


def get_logger(name: str) -> logging.Logger:
    """The logger of module `name` (`log = get_logger(__name__)`), its warnings printed as above."""
    print_warnings()
    return logging.getLogger(name)
