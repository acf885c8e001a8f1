"""Dictionaries: one file per variant, registered by name."""

from saelab.dictionaries._base import Dictionary, DictionaryConfig, Loss, Output, StepState
from saelab.dictionaries._registry import get, names, register

__all__ = ["Dictionary", "DictionaryConfig", "Loss", "Output", "StepState", "get", "names",
           "register", "create"]


def create(architecture: str, d_in: int, n_latents: int, **fields) -> Dictionary:
    """Build a dictionary of a registered architecture; every field but d_in and n_latents has a
    default."""
    from saelab.config import build

    cls = get(architecture)
    cfg = build(cls.Config, {"d_in": d_in, "n_latents": n_latents, **fields},
                what=f"architecture {architecture!r}")
    return cls(cfg)
