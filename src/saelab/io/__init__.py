"""Reading and writing dictionaries: saelab's own format, SAELens', sparsify's and
dictionary_learning's layouts, and the Hugging Face Hub. `load` detects the format."""

from saelab.io.api import convert, load
from saelab.io.detect import FORMATS, detect
from saelab.io.native import save

__all__ = ["FORMATS", "convert", "detect", "load", "save"]
