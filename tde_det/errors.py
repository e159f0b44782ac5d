"""Errors the user fixes (configuration, data): the tools print them as one ``error: ...`` line.

:func:`tde_det.engine.cli.exit_on_user_error` turns a :class:`UserError` into that line and exit
status 2; any other exception is a bug and keeps its traceback. Each subclass also derives from
the built-in type callers would catch without tde_det (ValueError, FileNotFoundError, KeyError).
"""

__all__ = ["UserError", "ConfigError", "FilesMissing", "NotRegistered", "DataCheckFailed", "message"]


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


def message(error):
    """The text after ``error:`` (KeyError-style quotes removed)."""
    return str(error.args[0]) if len(error.args) == 1 else str(error)
