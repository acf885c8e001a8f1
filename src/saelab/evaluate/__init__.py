"""Evaluation: one file per metric family, a registry, and the report writer.

A metric family is a `Family` subclass in its own module here, registered with
`@register("name")`; the registry imports every module of this package whose name does not start
with '_', so a new family is one new file. `evaluate` runs the requested families and returns the
report, keyed by family, with a `meta` entry.
"""

from saelab.evaluate._base import NEEDS, Batch, Context, Family
from saelab.evaluate._evaluate import DEFAULT_FAMILIES, evaluate
from saelab.evaluate._registry import families, family, register
from saelab.evaluate._report import (META, figures, format_report, headline, histogram,
                                     write_report)
from saelab.evaluate.splice import spliced_loss
from saelab.interpret.hookpoint import check_hookpoint

__all__ = ["DEFAULT_FAMILIES", "META", "NEEDS", "Batch", "Context", "Family", "check_hookpoint",
           "evaluate", "families", "family", "figures", "format_report", "headline", "histogram",
           "register",
           "spliced_loss", "write_report"]
