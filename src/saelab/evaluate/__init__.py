"""Evaluation: one file per metric family, a registry, and the report writer.

A metric family is a `Family` subclass in its own module here, registered with
`@register("name")`; the registry imports every module of this package whose name does not start
with '_', so a new family is one new file. `evaluate` runs the requested families and returns the
report, keyed by family, with a `meta` entry, written (with `out`) as report.json and
summary.html; `compare` sets several reports side by side.
"""

from saelab.evaluate._base import NEEDS, Batch, Context, Family
from saelab.evaluate._compare import (ABSENT, Comparison, Row, compare, format_comparison,
                                      load_report, write_comparison)
from saelab.evaluate._evaluate import DEFAULT_FAMILIES, evaluate
from saelab.evaluate._registry import describe, families, families_help, family, register
from saelab.evaluate._report import (META, REPORT_SCHEMA, figures, format_report, headline,
                                     histogram, write_report, write_summary)
from saelab.evaluate.splice import spliced_loss
from saelab.interpret.hookpoint import check_hookpoint

__all__ = ["ABSENT", "DEFAULT_FAMILIES", "META", "NEEDS", "REPORT_SCHEMA", "Batch", "Comparison",
           "Context", "Family", "Row", "check_hookpoint", "compare", "describe", "evaluate",
           "families", "families_help", "family", "figures", "format_comparison",
           "format_report", "headline", "histogram", "load_report", "register",
           "spliced_loss", "write_comparison", "write_report", "write_summary"]
