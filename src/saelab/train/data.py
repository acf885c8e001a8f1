"""Kept for code that imports `saelab.train.data.Labelled` / `WithGradients`: the source
adapters live in saelab.store (sources.py); import them from `saelab.train` or `saelab.store`."""

from saelab.store.sources import Labelled, WithGradients

__all__ = ["Labelled", "WithGradients"]
