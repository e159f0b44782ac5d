"""Errors the user fixes (configuration, data): the tools print them as one ``error: ...`` line.

:func:`tde_det.engine.cli.exit_on_user_error` turns a :class:`UserError` into that line and exit
status 2; any other exception is a bug and keeps its traceback. Each subclass also derives from
the built-in type callers would catch without tde_det (ValueError, FileNotFoundError, KeyError).

The exit statuses of every tool and script are the ``EXIT_*`` constants below (docs/TROUBLESHOOTING.md).
"""

import re

__all__ = ["UserError", "ConfigError", "FilesMissing", "NotRegistered", "DataCheckFailed", "UnreadableImage",
           "message", "EXIT_OK", "EXIT_FAILURE", "EXIT_USER_ERROR", "EXIT_STOPPED_ON_SIGNAL"]

EXIT_OK = 0  # the work is done
EXIT_FAILURE = 1  # a failure during the work (e.g. an export that does not reproduce the model, a bug)
EXIT_USER_ERROR = 2  # a mistake of the user's (config, data, weights, arguments): one "error:" line
EXIT_STOPPED_ON_SIGNAL = 3  # training stopped on a signal (SIGTERM, SIGUSR1) after saving a checkpoint


class UserError(Exception):
    """Base class: a problem of the configuration or the data, with a message that says the fix."""


class ConfigError(UserError, ValueError):
    """A config value that cannot work (class count, device, weights, an unknown key)."""


class FilesMissing(UserError, FileNotFoundError):
    """A file the configuration or the command line names does not exist."""


class NotRegistered(UserError, KeyError):
    """A dataset name that is not registered."""

    def __str__(self):  # KeyError's str() would quote the message
        return str(self.args[0]) if self.args else ""


class DataCheckFailed(UserError):
    """The pre-flight data check (:func:`tde_det.data.checks.check_datasets`) found problems."""


class UnreadableImage(UserError, OSError):
    """An image file that cannot be decoded (truncated, not an image) or whose size differs from its
    json record: skipped with a warning in training, an error in evaluation and in the tools."""


# torch's DataLoader re-raises a worker's exception as ``type(msg)`` with the worker's traceback in msg
_WORKER_TRACEBACK = re.compile(r"^Caught \w+ in DataLoader worker process \d+\.\nOriginal Traceback")


def message(error):
    """The text after ``error:`` (KeyError-style quotes removed; for an error re-raised from a
    DataLoader worker, the worker's own message without its traceback)."""
    text = str(error.args[0]) if len(error.args) == 1 else str(error)
    if _WORKER_TRACEBACK.match(text):
        marker = f"{type(error).__module__}.{type(error).__name__}: "
        if marker in text:
            text = text.rsplit(marker, 1)[1].strip()
    return text
