"""The one user-facing error type: what the CLI prints as `tsd <command>: error: …`, no traceback."""
from __future__ import annotations


def first_line(error: BaseException, default: str | None = None) -> str:
    """The first line of an exception's message, for a one-line error; `default` (the exception's
    type name unless given) when the message is empty. Library messages run over many lines."""
    lines = str(error).strip().splitlines()
    return lines[0] if lines else (type(error).__name__ if default is None else default)


def short_error(error: BaseException) -> str:
    """'Type: first line', or the type alone for an empty message."""
    text = first_line(error, "")
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


class UserError(ValueError):
    """A problem with the user's input (config, data, release, arguments), phrased for the user in one
    line that names the file, key, URL or value."""


class ConfigError(UserError):
    """A configuration problem, phrased '<file>: <key>: <what is wrong>' (keys get prefixed as the
    loader walks up the config)."""


class JobFailed(RuntimeError):
    """A job that ran and failed (shards still failing after their retries, a release that does not
    verify): one line saying what failed and what to do; the CLI exits with status 1."""


class Interrupted(Exception):
    """A run stopped on a signal after saving its work (SIGINT, SIGTERM): the CLI prints its message
    as one line, `<command>: <message>`, and exits 128 + the signal number (130 for Ctrl-C). A command
    that knows how to continue catches it first and adds the command that does."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum
