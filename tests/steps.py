"""Runs interrupted on purpose: `Run.take_step` wrapped for the length of a `with` block."""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator

from saelab.train import Run


@contextlib.contextmanager
def steps_wrapped(wrap: Callable) -> Iterator[None]:
    """`Run.take_step` replaced by `wrap(original)` inside the block."""
    original = Run.take_step
    Run.take_step = wrap(original)
    try:
        yield
    finally:
        Run.take_step = original


def killed_at(step: int, key: str | None = None):
    """A block in which training dies (KeyboardInterrupt, as a Ctrl-C or a kill would stop it)
    when a run (of hookpoint `key`, or any) is about to take step `step`."""
    def wrap(original):
        def dying(run, batch):
            if run.step == step and (key is None or run.key == key):
                raise KeyboardInterrupt
            return original(run, batch)
        return dying
    return steps_wrapped(wrap)


def counted(taken: list[int]):
    """A block in which the step index of every step taken is appended to `taken`."""
    def wrap(original):
        def counting(run, batch):
            taken.append(run.step)
            return original(run, batch)
        return counting
    return steps_wrapped(wrap)
