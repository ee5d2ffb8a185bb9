"""Exceptions raised for user mistakes and bad files.

The command line catches :class:`SppnetError` and prints its message as one line; anything
else is a bug and keeps its traceback.
"""


class SppnetError(Exception):
    """Base class of the errors sppnet reports to users as one line."""


class ConfigError(SppnetError, ValueError):
    """An option, argument or configuration value is not allowed."""


class DataError(SppnetError):
    """A dataset, archive or image file cannot be used."""


class ExportError(SppnetError):
    """An export failed, its check found a difference, or an exported file cannot be used."""


class WriteError(SppnetError):
    """A file cannot be written there: the folder is a file, read-only, or the disk is full."""


class TrainingError(SppnetError):
    """Training cannot go on: the loss or the weights stopped being finite numbers (divergence)."""
