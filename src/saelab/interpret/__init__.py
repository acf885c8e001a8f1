"""Interpretation: top-activating examples per latent and static HTML feature dashboards."""

from saelab.interpret.dashboard import select_features, write_dashboard
from saelab.interpret.from_store import dashboard_from_store
from saelab.interpret.hookpoint import check_hookpoint
from saelab.interpret.top_examples import TopExamples, collect_top_examples

__all__ = ["TopExamples", "check_hookpoint", "collect_top_examples", "dashboard_from_store",
           "select_features", "write_dashboard"]
