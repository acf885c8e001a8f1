"""Reading and writing dictionaries: saelab's own format (and, later, other libraries')."""

from saelab.io.native import load, save

__all__ = ["load", "save"]
