"""Errors meant for users. The CLI prints their message and exits non-zero."""

import errno
import re


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


_OS_ADVICE = {
    errno.ENOSPC: "no space left on the device: free some space (or write elsewhere) and rerun "
                  "the same command; what saelab had written is consistent, and a capture or a "
                  "training run resumes from its last shard or checkpoint",
    errno.EDQUOT: "the disk quota is exceeded: free some space (or write elsewhere) and rerun the "
                  "same command; a capture or a training run resumes where it stopped",
    errno.EACCES: "permission denied: choose a folder you may write to (or read), or change its "
                  "permissions",
    errno.EPERM: "operation not permitted: choose a folder you may write to, or change its "
                 "permissions",
    errno.EROFS: "the file system is read-only: write to another folder",
    errno.EADDRINUSE: "the address is in use: another program listens on that port; choose "
                      "another with --port",
    errno.ENOENT: "no such file or folder: check the path",
    errno.EMFILE: "too many open files: raise the limit (ulimit -n) and rerun",
}


TEMPORARY = re.compile(r"/\.([^/]+)\.[^/]*\.tmp/\1")
"""A path inside an atomic write's temporary folder (`.NAME.XXXX.tmp/NAME`)."""
WHERE_IT_GOES = r"/\1"


def explain_os_error(e: OSError) -> str:
    """A one-line message for an error the operating system raised (disk full, permission,
    port in use, ...): what happened, on which file, and what to do."""
    name = getattr(e, "filename", None)
    # a file inside an atomic write's temporary folder is named by where it was going
    where = f" ({TEMPORARY.sub(WHERE_IT_GOES, str(name))})" if name else ""
    advice = _OS_ADVICE.get(e.errno)
    if advice is None:
        return (f"the operating system refused: {e.strerror or e}{where}; rerun with --debug "
                f"for the traceback")
    return f"{advice}{where}"
