"""Interpretation: top-activating examples per latent and static HTML feature dashboards."""

from saelab.interpret.dashboard import select_features, write_dashboard
from saelab.interpret.top_examples import TopExamples, collect_top_examples

__all__ = ["TopExamples", "collect_top_examples", "select_features", "write_dashboard"]
