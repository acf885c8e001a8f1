"""Difference in means: one supervised direction per labelled concept.

For each concept, the atom is the mean of the activations of the rows where the concept holds
minus the mean of the rows where it does not, scaled to unit norm. It needs no training beyond two
running sums, yet it is the yardstick that recent dictionary papers hold SAEs against for finding
and steering a known concept: "Decomposing MLP Activations into Interpretable Features via
Semi-Nonnegative Matrix Factorization" (Shafran et al. 2025) and "AbsTopK: Rethinking Sparse
Autoencoders For Bidirectional Features" (Zhu, Khalili and Zhu 2025) both compare against it,
following "AxBench: Steering LLMs? Even Simple Baselines Outperform Sparse Autoencoders" (Wu et al.
2025), whose reference implementation is the `DiffMean` class of stanfordnlp/axbench
(axbench/models/mean.py: mean of the positive activations minus mean of the negative ones, then
set to unit norm). Relative to a TopK SAE: supervised (one atom per named concept, not learned
from reconstruction), dense linear codes, and no sparsity.

Labels: `[B, n_concepts]` with values 0 or 1 (1: the concept holds in that row), as
`saelab.train.Labelled` passes them, or, when calling `fit` directly with
`saelab.dictionaries.Rows(x, None, labels)`, integer classes `[B]` in `[0, n_latents)` (concept
c holds where the class is c: one atom per class against the rest; the concepts are the classes
up to the largest one seen). The sums run over the batches, so memory is one batch plus
`n_concepts * d_in` numbers, in float64.

The dictionary: `W_dec` row c is the unit direction of concept c; `b_dec` is the mean of all rows;
`encode(x) = (x - b_dec) W_dec^T`, the coordinate of the centred input along each direction
(AxBench scores concept presence by this projection; centring only shifts each score by a
constant); `decode(codes) = codes W_dec + b_dec`. The atoms are in general not orthogonal, so the
reconstruction is the sum of the projections, not a least-squares fit: it is a yardstick of
directions, not a reconstruction method. The buffer `mean_difference` `[n_latents]` keeps the norm
of each difference of means before normalising (the concept's separation, in input units).

From Python, with activations `x` [N, 576] and labels [N, 3]:
`dm = saelab.fit(saelab.create("diffmeans", d_in=576, n_latents=3), saelab.train.Labelled(x,
labels))`, then `dm.encode(x)` scores each concept.

There is no labelled store format yet, so `saelab train STORE --architecture diffmeans` is
refused with a message asking for labels; fit it from Python.

Where saelab chooses:
- `n_latents` is the most concepts the dictionary holds. Labels of fewer concepts fit the first
  atoms and leave the rest zero (zero codes; logged), so a dictionary of any width fits every
  dictionary slot; labels of more concepts than `n_latents`, a concept count that changes between
  batches, labels whose row count differs from the batch's, labels that are not 0/1, and a
  concept with no positive or no negative rows (named) are refused with a DataError.
- Atoms are unit norm as in AxBench; a concept whose two means coincide gets a zero atom.
- Before `fit` the atoms are zero and the dictionary reconstructs every input as `b_dec` (zero).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Iterable, NamedTuple

import torch
from torch import Tensor, nn

from saelab.config import check
from saelab.dictionaries._base import Dictionary, DictionaryConfig, Rows, as_rows
from saelab.dictionaries._registry import register
from saelab.errors import DataError
from saelab.ops.sparse import linear

log = logging.getLogger(__name__)


@dataclass
class DiffMeansConfig(DictionaryConfig):
    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.d_out == self.d_in, "d_out",
              f"must equal d_in={self.d_in} (diffmeans reconstructs its input), got {self.d_out}")


def concept_matrix(labels: Tensor | None, rows: int, n_latents: int) -> Tensor:
    """Labels as a bool matrix [rows, n_concepts]: from [rows, n_concepts] 0/1 values, or from
    integer classes [rows] (concept c holds where the class is c); a DataError if they do not
    fit."""
    if labels is None:
        raise DataError("diffmeans is fitted to concept labels: pass saelab.train.Labelled(x, "
                        "labels) to saelab.fit, or Rows(x, None, labels) batches to fit")
    if labels.ndim not in (1, 2) or labels.shape[0] != rows:
        raise DataError(f"labels have shape {tuple(labels.shape)} for a batch of {rows} rows; "
                        f"expected [{rows}, n_concepts] (0/1) or [{rows}] (integer classes)")
    if labels.ndim == 1:
        if labels.is_floating_point() or labels.dtype == torch.bool or (
                rows and (labels.min() < 0 or labels.max() >= n_latents)):
            raise DataError(f"labels of shape [{rows}] are integer classes in [0, n_latents="
                            f"{n_latents}); got {labels.dtype} values. For binary concepts "
                            f"pass [{rows}, n_concepts] labels")
        return nn.functional.one_hot(labels.long(), n_latents).bool()
    if labels.shape[1] > n_latents:
        raise DataError(f"labels have {labels.shape[1]} concepts but the dictionary has "
                        f"n_latents={n_latents} atoms, one per concept: create it with "
                        f"n_latents={labels.shape[1]}")
    if not ((labels == 0) | (labels == 1)).all():
        raise DataError("diffmeans labels must be 0 or 1 (1: the concept holds in that row)")
    return labels.bool()


class Sums(NamedTuple):
    """Running sums over the batches, in float64."""

    total: Tensor
    """Sum of all rows [d_in]."""
    positive: Tensor
    """Sum of the rows where each concept holds [n_concepts, d_in]."""
    n_positive: Tensor
    """Rows where each concept holds [n_concepts]."""
    rows: int
    """Rows seen."""
    classes: bool
    """Whether the labels were integer classes [B] (one column per possible class)."""


def running_sums(batches: Iterable, d_in: int, n_latents: int) -> Sums:
    """The sums of `batches` (each read with `as_rows`), checking every batch's labels."""
    sums: Sums | None = None
    for batch in batches:
        rows = as_rows(batch)
        x = rows.x
        if x.ndim != 2 or x.shape[1] != d_in:
            raise DataError(f"a batch has shape {tuple(x.shape)}; expected [batch, d_in={d_in}]")
        held = concept_matrix(rows.labels, x.shape[0], n_latents).to(x.device)
        if sums is not None and held.shape[1] != sums.n_positive.shape[0]:
            raise DataError(f"a batch has labels of {held.shape[1]} concepts after batches of "
                            f"{sums.n_positive.shape[0]}; every batch needs the same concepts")
        x64 = x.detach().double()
        batch_sums = Sums(x64.sum(0), held.double().T @ x64, held.sum(0).double(), x.shape[0],
                          rows.labels.ndim == 1)
        sums = batch_sums if sums is None else Sums(
            *(a + b for a, b in zip(sums[:4], batch_sums[:4])), sums.classes)
    if sums is None or sums.rows == 0:
        raise DataError("diffmeans got no rows to fit")
    return without_unseen_classes(sums)


def without_unseen_classes(sums: Sums) -> Sums:
    """For integer-class labels, the concepts up to the largest class seen (the classes above
    it are not concepts of this data: their atoms stay zero)."""
    if not sums.classes:
        return sums
    k = int(sums.n_positive.nonzero().max()) + 1
    return Sums(sums.total, sums.positive[:k], sums.n_positive[:k], sums.rows, True)


def check_both_sides(sums: Sums) -> None:
    """Every concept needs rows where it holds and rows where it does not."""
    for c, n in enumerate(sums.n_positive.tolist()):
        if n == 0 or n == sums.rows:
            side = "positive" if n == 0 else "negative"
            raise DataError(f"concept {c} has no {side} rows (it {'never' if n == 0 else 'always'}"
                            f" holds in the {sums.rows} rows): a difference of means needs rows "
                            f"where the concept holds and rows where it does not")


@register("diffmeans")
class DiffMeans(Dictionary):
    """Difference-in-means directions. Weights: W_dec [n_latents, d_in] (unit direction of each
    concept; zero rows beyond the labelled concepts), b_dec [d_in] (mean of all rows); buffer
    mean_difference [n_latents] (norm of each concept's difference of means)."""

    Config = DiffMeansConfig
    trained_by = "fit"
    needs = frozenset({"labels"})
    unit_norm_decoder = False  # fitted rows are unit norm, rows beyond the concepts are zero
    scales_with_input = ("b_dec", "mean_difference")

    def __init__(self, cfg: DiffMeansConfig):
        super().__init__(cfg)
        self.W_dec = nn.Parameter(torch.zeros(cfg.n_latents, cfg.d_in))
        self.b_dec = nn.Parameter(torch.zeros(cfg.d_in))
        self.register_buffer("mean_difference", torch.zeros(cfg.n_latents))

    def encode(self, x: Tensor) -> Tensor:
        return linear(x - self.b_dec, self.W_dec)

    @torch.no_grad()
    def fit(self, batches: Iterable[Tensor | tuple | Rows]) -> None:
        """One atom per labelled concept from running sums over `batches` (Rows with labels);
        replaces anything fitted before."""
        sums = running_sums(batches, self.d_in, self.n_latents)
        check_both_sides(sums)
        n = sums.n_positive[:, None]  # [n_concepts, 1]
        positive_mean = sums.positive / n
        negative_mean = (sums.total - sums.positive) / (sums.rows - n)
        difference = positive_mean - negative_mean  # [n_concepts, d_in]
        norm = difference.norm(dim=1)  # [n_concepts]
        k = len(norm)
        like = self.W_dec
        self.W_dec.zero_()
        self.W_dec[:k] = (difference / norm.clamp_min(1e-30)[:, None]).to(like)
        self.b_dec.copy_((sums.total / sums.rows).to(like))
        self.mean_difference.zero_()
        self.mean_difference[:k] = norm.to(like)
        if k < self.n_latents:
            log.info("diffmeans: %d concepts for %d latents; latents %d..%d are zero atoms", k,
                     self.n_latents, k, self.n_latents - 1)
