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


def one_line(exc: BaseException) -> str:
    """The message of a user error as the one line the CLI prints.

    PyTorch's DataLoader re-raises an exception of a worker process as the same type with the
    worker's traceback as message ("Caught DataError in DataLoader worker process 0 ...
    Original Traceback ..."): the original message is the traceback's last line, after the
    qualified type name. Any other line breaks are folded into spaces.
    """
    text = str(exc)
    if "Original Traceback" in text:
        lines = [line for line in text.splitlines() if line.strip()]
        last = lines[-1].strip() if lines else text
        name, sep, message = last.partition(": ")
        if sep and name.rsplit(".", 1)[-1] == type(exc).__name__:
            last = message
        text = last
    return " ".join(text.split())
