"""User-facing errors. The CLI prints ``error: <message>`` and exits with code 2 for these."""

from __future__ import annotations


class UserError(Exception):
    """Bad input from the user (missing or corrupt file, wrong layout, bad config or checkpoint).

    The message is one line that names the offending file or value and the fix.
    """


class ConfigError(UserError):
    """Invalid configuration (unknown key, wrong type, missing file)."""


class DataError(UserError):
    """Missing or corrupt dataset files."""


class CheckpointError(UserError):
    """A checkpoint that does not fit the config, or is unsafe to load."""
