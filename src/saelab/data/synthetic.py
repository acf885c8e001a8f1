"""Activations with a known answer: sparse non-negative combinations of planted unit directions.

Used to check that a dictionary recovers the directions that generated the data (tests and
bench/recovery.py). Feature frequencies follow a Zipf law, magnitudes are log-normal, and
optional parent/child pairs model hierarchy: a child only ever fires with its parent.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from saelab.config import check


class Planted(NamedTuple):
    """Synthetic activations and the directions that made them."""

    x: Tensor
    """Activations [n, d]."""
    atoms: Tensor
    """Planted unit directions [n_atoms, d]."""
    codes: Tensor
    """True sparse codes [n, n_atoms] (x = codes @ atoms + noise)."""
    parents: Tensor
    """Parent atom of each atom, -1 for none [n_atoms]."""


def planted(n: int = 50_000, d: int = 64, n_atoms: int = 512, mean_active: float = 5.0,
            zipf: float = 1.0, magnitude_sigma: float = 0.3, noise: float = 0.01,
            n_parents: int = 0, children_per_parent: int = 2, seed: int = 0) -> Planted:
    """Draw `n` activations of width `d` from `n_atoms` planted directions.

    Each atom i fires independently with probability proportional to (i + 1) ** -zipf, scaled so
    that about `mean_active` atoms fire per row; magnitudes are exp(N(0, magnitude_sigma)).
    With `n_parents` > 0, the first n_parents atoms each get `children_per_parent` children among
    the next atoms: a child fires only in rows where its parent fires (then with its own
    conditional probability 1 / children_per_parent), never alone.
    """
    check(n_atoms >= 1 and d >= 1 and n >= 1, "n_atoms", "sizes must be positive")
    check(0 < mean_active <= n_atoms, "mean_active", f"must be in (0, n_atoms={n_atoms}]")
    check(n_parents * (1 + children_per_parent) <= n_atoms, "n_parents",
          "parents and their children must fit in n_atoms")
    # salted, so that seeding torch with the same number before creating a dictionary does not
    # initialise its atoms to the planted ones
    g = torch.Generator().manual_seed(seed + 0x5EED_DA7A)
    atoms = torch.randn(n_atoms, d, generator=g)
    atoms /= atoms.norm(dim=1, keepdim=True)
    weights = torch.arange(1, n_atoms + 1, dtype=torch.float64) ** -zipf
    prob = (weights / weights.sum() * mean_active).clamp(max=1.0).float()
    fires = torch.rand(n, n_atoms, generator=g) < prob
    parents = torch.full((n_atoms,), -1, dtype=torch.long)
    child = n_parents
    for p in range(n_parents):
        for _ in range(children_per_parent):
            parents[child] = p
            fires[:, child] = fires[:, p] & (torch.rand(n, generator=g) < 1 / children_per_parent)
            child += 1
    mags = torch.exp(torch.randn(n, n_atoms, generator=g) * magnitude_sigma)
    codes = fires.float() * mags
    x = codes @ atoms + noise * torch.randn(n, d, generator=g)
    return Planted(x, atoms, codes, parents)


def recovery(atoms: Tensor, W_dec: Tensor, threshold: float = 0.9) -> tuple[float, float]:
    """(mean over planted atoms of the best cosine with a learned atom, fraction above
    `threshold`)."""
    learned = W_dec / W_dec.norm(dim=1, keepdim=True).clamp_min(1e-12)
    best = (atoms @ learned.T).max(dim=1).values
    return float(best.mean()), float((best > threshold).float().mean())
