"""APP, attenuation via posterior probabilities (Fereidouni et al. 2025, "Evaluating Sparse
Autoencoders for Monosemantic Representation"; reference: MultifacetedNLP/SAEMonosemanticity,
`FineGrainedBlocking.py` for APP and `MonosemanticSAEBlocking.py` / `MainBlocking.py` for masking).

A concept is removed by editing the features that fire for it, judged on labelled examples:
- a feature active on at least `min_fraction` of the concept's examples and on fewer than that
  fraction of every other class's is *monosemantic* for the concept: its code is set to 0;
- one active for the concept and for some other class is *polysemantic*: its code a is
  multiplied by 1 - P(concept | a), the posterior from the densities of its activation among the
  concept's examples and among each other class's, p_c(a) / (p_c(a) + sum_o p_o(a)) (each
  density over that class's positive codes). Codes outside mean +- 2.5 std of the concept's are
  left as they are (the reference's tails).

Full masking (`masking_edit`) sets every feature active for the concept to 0. The paper's claim:
APP removes the concept with the smallest perplexity increase.

Where saelab departs: the reference reads one code per example (the last token of a prompt) and
runs the SAE without its error term; here the examples are token rows (any rows the caller
gives), the densities are Gaussian KDEs (scipy, Scott's bandwidth) tabulated on a grid instead of
the reference's histogram KDE, and the edit goes through `Steering`, which keeps the error term.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

from saelab.errors import DataError
from saelab.steer.edits import Edit, ablate

TAIL_STDS = 2.5
"""Codes further than this many standard deviations from the concept's mean are not damped."""


class Attenuation:
    """The APP edit of one concept: zero its monosemantic features, damp its polysemantic ones
    by 1 - P(concept | code)."""

    def __init__(self, masked: Sequence[int], attenuated: Sequence[int], grid: Tensor,
                 p_concept: Tensor, p_others: Tensor, low: Tensor, high: Tensor):
        self.masked, self.attenuated = list(masked), list(attenuated)
        self.features = tuple(self.masked + self.attenuated)
        self.grid = grid  # [G] code values the densities are tabulated at
        self.p_concept, self.p_others = p_concept, p_others  # [F, G] each
        self.low, self.high = low, high  # [F]: outside, codes are left alone

    def damping(self, codes_NF: Tensor) -> Tensor:
        """The factor [N, F] each attenuated feature's code is multiplied by."""
        pc, po = _interp(codes_NF, self.grid, self.p_concept), _interp(codes_NF, self.grid,
                                                                       self.p_others)
        factor = 1 - pc / (pc + po + 1e-12)
        tail = (codes_NF < self.low) | (codes_NF > self.high) | (codes_NF <= 0)
        return torch.where(tail, torch.ones_like(factor), factor)

    def apply(self, codes_NL: Tensor) -> Tensor:
        out = codes_NL.clone()
        if self.masked:
            out[:, self.masked] = 0
        if self.attenuated:
            a = codes_NL[:, self.attenuated].float()
            out[:, self.attenuated] = (a * self.damping(a)).to(out.dtype)
        return out

    @classmethod
    def fit(cls, codes_by_class: Mapping[str, Tensor], concept: str, min_fraction: float = 0.1,
            grid_size: int = 512) -> "Attenuation":
        """Fit on the codes [N_c, n_latents] of each class's examples (rows), for `concept`."""
        masked, attenuated = concept_features(codes_by_class, concept, min_fraction)
        if not masked and not attenuated:
            raise DataError(f"no feature fires on {min_fraction:.0%} of the rows of {concept!r}; "
                            f"lower min_fraction or give more rows")
        feats = attenuated or [0]
        top = max(float(c[:, feats].max()) for c in codes_by_class.values())
        grid = torch.linspace(0, max(top, 1e-6) * 1.05, grid_size)
        others = [k for k in codes_by_class if k != concept]
        p_c = torch.stack([_density(codes_by_class[concept][:, f], grid) for f in attenuated]
                          ) if attenuated else torch.zeros(0, grid_size)
        p_o = torch.stack([sum(_density(codes_by_class[o][:, f], grid) for o in others)
                           for f in attenuated]) if attenuated else torch.zeros(0, grid_size)
        low, high = _tails(codes_by_class[concept], attenuated)
        return cls(masked, attenuated, grid, p_c, p_o, low, high)


def concept_features(codes_by_class: Mapping[str, Tensor], concept: str,
                     min_fraction: float = 0.1) -> tuple[list[int], list[int]]:
    """(monosemantic, polysemantic) features of `concept`: active on at least `min_fraction` of
    its rows, and on that fraction of no other class's rows (monosemantic) or of some
    (polysemantic)."""
    if concept not in codes_by_class or len(codes_by_class) < 2:
        raise DataError(f"APP needs the codes of the concept {concept!r} and of at least one "
                        f"other class; got classes {sorted(codes_by_class)}")
    active = {k: ((c > 0).float().mean(0) >= min_fraction) for k, c in codes_by_class.items()}
    mine = active[concept]
    elsewhere = torch.stack([a for k, a in active.items() if k != concept]).any(0)
    return ((mine & ~elsewhere).nonzero()[:, 0].tolist(),
            (mine & elsewhere).nonzero()[:, 0].tolist())


def masking_edit(codes_by_class: Mapping[str, Tensor], concept: str,
                 min_fraction: float = 0.1) -> Edit:
    """Full masking: every feature active for `concept` set to 0."""
    masked, attenuated = concept_features(codes_by_class, concept, min_fraction)
    if not masked and not attenuated:
        raise DataError(f"no feature fires on {min_fraction:.0%} of the rows of {concept!r}")
    return ablate(masked + attenuated)


def _density(values: Tensor, grid: Tensor) -> Tensor:
    """Gaussian KDE of the positive `values`, on `grid` (0 with fewer than 2 distinct values)."""
    from scipy.stats import gaussian_kde

    v = values[values > 0].double().numpy()
    if len(np.unique(v)) < 2:
        return torch.zeros_like(grid)
    return torch.from_numpy(gaussian_kde(v)(grid.double().numpy())).float()


def _tails(codes_NL: Tensor, features: list[int]) -> tuple[Tensor, Tensor]:
    lows, highs = [], []
    for f in features:
        v = codes_NL[:, f][codes_NL[:, f] > 0].float()
        mu, sd = float(v.mean()), float(v.std()) if len(v) > 1 else 0.0
        lows.append(mu - TAIL_STDS * sd)
        highs.append(mu + TAIL_STDS * sd)
    return torch.tensor(lows), torch.tensor(highs)


def _interp(x_NF: Tensor, grid: Tensor, table_FG: Tensor) -> Tensor:
    """table_FG[f] linearly interpolated at x_NF[:, f] (grid evenly spaced from 0)."""
    step = float(grid[1] - grid[0])
    pos = (x_NF / step).clamp(0, len(grid) - 1)  # fractional grid index
    lo = pos.floor().long().clamp(max=len(grid) - 2)
    frac = pos - lo
    table = table_FG.T.to(x_NF)  # [G, F]
    left = table.gather(0, lo)
    right = table.gather(0, lo + 1)
    return left + frac * (right - left)
