"""PCA: principal component analysis as a dictionary, the classical linear baseline.

The atoms are the principal directions of the activations (the leading right singular vectors of
the centred data) and the codes are the coordinates along them: `encode(x) = (x - mean) W_dec^T`,
`decode(codes) = codes W_dec + mean`. Relative to a TopK SAE there is no sparsity at all: every
code is active, the atoms are orthonormal, and their number cannot exceed the input's width. It is
the dense yardstick that SAE papers hold their dictionaries against (e.g. "AxBench: Steering LLMs?
Even Simple Baselines Outperform Sparse Autoencoders", Wu et al. 2025, which keeps PCA among its
baselines).

Fitting streams: scikit-learn's `sklearn.decomposition.IncrementalPCA` (Ross, Lim, Lin and Yang
2008, "Incremental Learning for Robust Visual Tracking": an SVD of the current components stacked
on the new batch and a mean correction) takes the batches one at a time with `partial_fit`, so
memory is one batch plus the current components, whatever the size of the store. By default
(`exact=True`) it tracks all `d_in` directions and the dictionary keeps the leading `n_latents`:
the explained variances are then those of an SVD of all rows at once
(`tests/dictionaries/test_pca.py` checks 1e-4 relative against NumPy), for about `(batch + d_in) *
d_in^2` operations per batch and `d_in^2` float64 numbers of memory. `exact=False` tracks only
`n_latents` directions, scikit-learn's cheaper approximation for wide inputs: measured (2026-12-02)
on 20,000 rows of width 64 with decaying variances, in batches of 256, keeping 8 directions
explained 0.5854 of the variance against the SVD's 0.5864 (each direction's share within 1.1%),
keeping 32 explained 0.9709 against 0.9712 (the smallest shares up to 6% off).

From Python: `pca = saelab.fit(saelab.create("pca", d_in=576, n_latents=64), "store/")` (one
pass over the store by default), then `pca.explained_variance_ratio` ([n_latents], as
scikit-learn's `explained_variance_ratio_`) and `pca.explained_variance`.

From the command line: `saelab train STORE --architecture pca --n-latents 576` (one pass over
the store unless `--steps` or `--epochs` says otherwise).

Where saelab chooses:
- `n_latents > d_in`: a dataset of width `d_in` has at most `d_in` principal directions (fewer
  when it has fewer rows), so the atoms beyond them are zero rows of `W_dec` with zero codes. Such a
  dictionary still constructs (any width fits every dictionary slot) and reconstructs exactly.
- Batches smaller than the number of components are merged until there are enough rows for
  IncrementalPCA's first `partial_fit` (it needs at least as many rows as components); later
  batches of any size go in as they come.
- `whiten=True` divides each code by its component's standard deviation (unit-variance codes,
  as scikit-learn's `whiten`) and `decode` multiplies it back, so the reconstruction is the same.
- Computation is in float64 inside scikit-learn; the result is stored in the dictionary's dtype.
- Before `fit` the atoms are zero and the dictionary reconstructs every input as `b_dec` (zero).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Iterable

import numpy as np
import torch
from torch import Tensor, nn

from saelab.config import check, option
from saelab.dictionaries._base import Dictionary, DictionaryConfig, Rows, as_rows
from saelab.dictionaries._registry import register
from saelab.errors import DataError
from saelab.ops.sparse import linear

log = logging.getLogger(__name__)


@dataclass
class PCAConfig(DictionaryConfig):
    exact: bool = option(True, "Track all d_in directions while fitting and keep the leading "
                               "n_latents (exact); False tracks only n_latents (cheaper, "
                               "approximate when n_latents < d_in).")
    whiten: bool = option(False, "Divide each code by its component's standard deviation "
                                 "(unit-variance codes); decode multiplies it back.")

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.d_out == self.d_in, "d_out",
              f"must equal d_in={self.d_in} (PCA reconstructs its input), got {self.d_out}")


def numpy_rows(batch: Tensor | tuple | Rows, d_in: int) -> np.ndarray:
    """The input rows of a batch as a float64 array [B, d_in] (a DataError if the width is
    wrong)."""
    x = as_rows(batch).x
    if x.ndim != 2 or x.shape[1] != d_in:
        raise DataError(f"a batch has shape {tuple(x.shape)}; expected [batch, d_in={d_in}]")
    return x.detach().to("cpu", torch.float64).numpy()


def incremental_pca(batches: Iterable, d_in: int, n_components: int):
    """An `IncrementalPCA` fitted over `batches` one at a time; batches are merged only until the
    first `partial_fit` has `n_components` rows. With fewer rows in all, the components are as
    many as the rows."""
    from sklearn.decomposition import IncrementalPCA

    pca = IncrementalPCA(n_components=n_components)
    pending: list[np.ndarray] | None = []  # rows held until the first partial_fit has enough
    for batch in batches:
        x = numpy_rows(batch, d_in)
        if len(x) == 0:
            continue
        if pending is None:  # the first partial_fit is done: every batch goes in as it comes
            pca.partial_fit(x)
            continue
        pending.append(x)
        if sum(len(p) for p in pending) >= n_components:
            pca.partial_fit(np.concatenate(pending))
            pending = None
    if pending is not None:  # fewer rows than components in all
        rows = sum(len(p) for p in pending)
        if rows < 2:
            raise DataError(f"PCA needs at least 2 rows of data; the batches held {rows}")
        pca = IncrementalPCA(n_components=rows)
        pca.partial_fit(np.concatenate(pending))
    return pca


@register("pca")
class PCA(Dictionary):
    """Principal components. Weights: W_dec [n_latents, d_in] (orthonormal principal directions,
    in decreasing order of variance; zero rows beyond the rank), b_dec [d_in] (the data mean);
    buffers explained_variance [n_latents] (variance along each direction, unbiased; zero beyond
    the rank) and total_variance [] (the data's total variance), in the input's units squared."""

    Config = PCAConfig
    trained_by = "fit"
    unit_norm_decoder = False  # fitted rows are unit norm, the rows beyond the rank are zero
    scales_with_input = ("b_dec",)  # variances fold with the square (fold_input_scale)

    def __init__(self, cfg: PCAConfig):
        super().__init__(cfg)
        self.W_dec = nn.Parameter(torch.zeros(cfg.n_latents, cfg.d_in))
        self.b_dec = nn.Parameter(torch.zeros(cfg.d_in))
        self.register_buffer("explained_variance", torch.zeros(cfg.n_latents))
        self.register_buffer("total_variance", torch.zeros(()))

    @property
    def explained_variance_ratio(self) -> Tensor:
        """Fraction of the total variance along each direction [n_latents] (scikit-learn's
        `explained_variance_ratio_`); sums to 1 when every direction is kept."""
        return self.explained_variance / self.total_variance.clamp_min(1e-30)

    def code_scale(self) -> Tensor:
        """Standard deviation of each component when whitening [n_latents] (1 otherwise; 0 for
        the zero atoms, whose codes stay 0)."""
        if not self.cfg.whiten:
            return torch.ones_like(self.explained_variance)
        return self.explained_variance.clamp_min(0).sqrt()

    def encode(self, x: Tensor) -> Tensor:
        codes = linear(x - self.b_dec, self.W_dec)  # [B, n_latents]
        if self.cfg.whiten:
            scale = self.code_scale()
            codes = codes * torch.where(scale > 0, scale.reciprocal(), torch.zeros_like(scale))
        return codes

    def decode(self, codes: Tensor) -> Tensor:
        if self.cfg.whiten:
            codes = codes * self.code_scale()
        return codes @ self.W_dec + self.b_dec

    @torch.no_grad()
    def fit(self, batches: Iterable[Tensor | tuple | Rows]) -> None:
        """Fit the principal directions over `batches` with IncrementalPCA (one pass, memory of
        one batch); replaces anything fitted before."""
        tracked = self.d_in if self.cfg.exact else min(self.n_latents, self.d_in)
        pca = incremental_pca(batches, self.d_in, tracked)
        k = min(self.n_latents, pca.components_.shape[0])
        n = pca.n_samples_seen_
        like = self.W_dec
        self.W_dec.zero_()
        self.W_dec[:k] = torch.as_tensor(pca.components_[:k]).to(like)
        self.b_dec.copy_(torch.as_tensor(pca.mean_).to(like))
        self.explained_variance.zero_()
        self.explained_variance[:k] = torch.as_tensor(pca.explained_variance_[:k]).to(like)
        self.total_variance.fill_(float(np.sum(pca.var_)) * n / (n - 1))
        log.info("pca: %d directions from %d rows explain %.4f of the variance", k, n,
                 float(np.sum(pca.explained_variance_ratio_[:k])))

    @torch.no_grad()
    def fold_input_scale(self, scale: float) -> None:
        super().fold_input_scale(scale)
        self.explained_variance.div_(scale * scale)
        self.total_variance.div_(scale * scale)
