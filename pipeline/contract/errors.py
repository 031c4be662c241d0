"""The one user-facing error type: what the CLI prints as `tsd <command>: error: …`, no traceback."""
from __future__ import annotations


class UserError(ValueError):
    """A problem with the user's input (config, data, release, arguments), phrased for the user in one
    line that names the file, key, URL or value."""


class ConfigError(UserError):
    """A configuration problem, phrased '<file>: <key>: <what is wrong>' (keys get prefixed as the
    loader walks up the config)."""


class JobFailed(RuntimeError):
    """A job that ran and failed (shards still failing after their retries, a release that does not
    verify): one line saying what failed and what to do; the CLI exits with status 1."""
