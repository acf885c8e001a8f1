"""Dictionaries: one file per variant, registered by name."""

from saelab.dictionaries._base import (
    AuxKConfig,
    Dictionary,
    DictionaryConfig,
    Loss,
    Output,
    Rows,
    StepState,
    as_rows,
)
from saelab.dictionaries._formats import SaeLensMapping, SparsifyMapping
from saelab.dictionaries._registry import get, names, register

__all__ = ["AuxKConfig", "Dictionary", "DictionaryConfig", "Loss", "Output", "SaeLensMapping",
           "Rows", "SparsifyMapping", "StepState", "as_rows", "get", "names", "register", "create"]


def create(architecture: str, d_in: int, n_latents: int, *, seed: int | None = 0,
           **fields) -> Dictionary:
    """Build a dictionary of a registered architecture; every field but d_in and n_latents has a
    default. Its initial weights are drawn from torch's generator seeded with `seed`, inside
    `torch.random.fork_rng` (the caller's random state is left as it was), so the same seed
    gives the same dictionary in any process; `seed=None` draws from the global generator."""
    import torch

    from saelab.config import build

    cls = get(architecture)
    cfg = build(cls.Config, {"d_in": d_in, "n_latents": n_latents, **fields},
                what=f"architecture {architecture!r}")
    if seed is None:
        return cls(cfg)
    with torch.random.fork_rng(devices=[]):  # the CPU generator (weights are made on the CPU)
        torch.random.default_generator.manual_seed(seed)
        return cls(cfg)
