"""Errors meant for users. The CLI prints their message and exits non-zero."""


class SaelabError(Exception):
    """Base class of every error saelab raises on purpose (bad input, missing package, ...)."""


class ConfigError(SaelabError, ValueError):
    """A configuration field is out of range or unknown."""


class FormatError(SaelabError):
    """A file or folder is corrupt, truncated or in a format saelab does not read."""


class MissingDependencyError(SaelabError, ImportError):
    """An optional package is needed; the message names the command that installs it."""


class DataError(SaelabError, ValueError):
    """Activations or data are unusable (wrong shape, NaN or inf values, empty)."""


class OutputExistsError(SaelabError, FileExistsError):
    """An output folder already holds a run; pass overwrite to replace it."""
