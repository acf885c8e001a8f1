"""Timing several ways of doing one job side by side, for the benchmarks."""

from __future__ import annotations

import time
from collections.abc import Callable


def interleaved(runs: dict[str, Callable[[], object]], rounds: int,
                warmup: bool = True) -> dict[str, list[float]]:
    """Seconds of each run, `rounds` times: one of each per round, in an order that rotates
    every round, so that a machine whose speed drifts slows all of them alike (after one
    untimed call of each with `warmup`)."""
    names = list(runs)
    times: dict[str, list[float]] = {name: [] for name in names}
    if warmup:
        for fn in runs.values():
            fn()
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            start = time.perf_counter()
            runs[name]()
            times[name].append(time.perf_counter() - start)
    return times
