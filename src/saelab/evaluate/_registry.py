"""Metric families: streaming accumulators over (x, output) batches, registered by name."""

from __future__ import annotations

from typing import Callable

from saelab.errors import ConfigError

_FAMILIES: dict[str, Callable] = {}


def register(name: str):
    """Class decorator: register a metric family (an accumulator with update() and result())."""
    def wrap(cls):
        _FAMILIES[name] = cls
        cls.family = name
        return cls
    return wrap


def families() -> list[str]:
    return sorted(_FAMILIES)


def make(name: str, dictionary):
    """The accumulator of family `name` for `dictionary` (families read what they need of it:
    the number of latents, the decoder)."""
    if name not in _FAMILIES:
        raise ConfigError(f"unknown metric family {name!r}; known: {', '.join(families())}")
    return _FAMILIES[name](dictionary)
