"""ICA: independent component analysis as a dictionary, the classical baseline for non-Gaussian
directions.

ICA models the activations as a linear mixture of statistically independent, non-Gaussian sources
and looks for the unmixing that makes the codes as non-Gaussian as possible (Hyvarinen and Oja
2000, "Independent Component Analysis: Algorithms and Applications"; FastICA: Hyvarinen 1999,
"Fast and Robust Fixed-Point Algorithms for Independent Component Analysis"). Sparse, heavy-tailed
features are such sources, so for a complete basis ICA is a close relative of sparse dictionary
learning. Relative to a TopK SAE: the codes are a linear map of the input (no activation, no
sparsity constraint, every code active), the atoms are at most `d_in` (a complete, not an
overcomplete, basis), and nothing is trained by gradient.

saelab fits scikit-learn's `sklearn.decomposition.FastICA` (parallel algorithm, `logcosh`
contrast by default, whitening by SVD with `whiten="unit-variance"`). FastICA needs all its rows
in memory, so `fit` reads at most `max_rows` rows (default 50,000) from the batches it is given
and stops reading there: from a store, the first batches of the shuffled stream, so a random
sample. Memory is `max_rows * d_in * 8` bytes (float64) plus scikit-learn's copies.

The dictionary: with `mixing` the estimated mixing matrix `[d_in, n]` and `unmixing` its
pseudo-inverse `[n, d_in]` (whitening included), each atom (row of `W_dec`) is a column of `mixing`
scaled to unit norm, and the codes are scaled by that norm to match, so the reconstruction is
unchanged: `encode(x) = (x - mean) W_enc^T` with `W_enc = diag(|mixing_i|) unmixing`, `decode(c) =
c W_dec + mean`. The sources FastICA returns have unit variance on the sample, so the standard
deviation of code i is the norm of its mixing column; the atoms are ordered by it, largest first.

From Python: `ica = saelab.fit(saelab.create("ica", d_in=576, n_latents=128), "store/")`.

From the command line: `saelab train STORE --architecture ica --n-latents 128 --max-rows 50000`.

Where saelab chooses:
- Components: `min(n_latents, d_in, rows read)`; with fewer than `n_latents` the remaining atoms
  are zero rows of `W_dec` and `W_enc` (zero codes). With `n_latents < d_in` the data is first
  reduced to its leading principal subspace (FastICA's whitening), so the reconstruction is the
  PCA reconstruction of that rank; with `n_latents >= d_in` it is exact.
- Determinism: FastICA's `random_state` (its initial unmixing) is drawn from torch's generator
  when the dictionary is built, so `saelab.create("ica", ..., seed=0)` fixes it, and kept as the
  int64 buffer `random_state` (saved and loaded with the weights). Two fits of the same
  dictionary on the same rows give bit-identical weights.
- Rank: with more components than the rank of the data, whitening divides by singular values
  near zero and the extra components are noise; keep `n_latents` at most the rank.
- A FastICA that stops at `max_iter` without reaching `tol` is logged as a warning (scikit-learn's
  ConvergenceWarning), not raised: raise `max_iter` or lower `n_latents`.
- Signs are FastICA's (a source and its negation are equally independent).
- Before `fit` the atoms are zero and the dictionary reconstructs every input as `b_dec` (zero).
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from typing import Iterable, Literal

import numpy as np
import torch
from torch import Tensor, nn

from saelab.config import check, option
from saelab.dictionaries._base import Dictionary, DictionaryConfig, Rows, as_rows
from saelab.dictionaries._registry import register
from saelab.errors import DataError
from saelab.ops.sparse import linear

log = logging.getLogger(__name__)

CONTRASTS = ("logcosh", "exp", "cube")


@dataclass
class ICAConfig(DictionaryConfig):
    max_rows: int = option(50_000, "Most rows fit reads from the batches (FastICA holds them all "
                                   "in memory); it stops reading there.")
    max_iter: int = option(200, "FastICA's maximum number of iterations.")
    tol: float = option(1e-4, "FastICA's convergence tolerance on the unmixing update.")
    fun: Literal["logcosh", "exp", "cube"] = option(
        "logcosh", "FastICA's contrast function (approximation of neg-entropy).")

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.d_out == self.d_in, "d_out",
              f"must equal d_in={self.d_in} (ICA reconstructs its input), got {self.d_out}")
        check(self.max_rows >= 2, "max_rows", f"must be at least 2, got {self.max_rows}")
        check(self.max_iter > 0, "max_iter", f"must be positive, got {self.max_iter}")
        check(self.tol > 0, "tol", f"must be positive, got {self.tol}")
        check(self.fun in CONTRASTS, "fun",
              f"must be one of {', '.join(CONTRASTS)}, got {self.fun!r}")


def sample_rows(batches: Iterable, d_in: int, max_rows: int) -> np.ndarray:
    """The first `max_rows` input rows of `batches` as float64 [N, d_in]; stops reading there."""
    parts: list[np.ndarray] = []
    rows = 0
    for batch in batches:
        x = as_rows(batch).x
        if x.ndim != 2 or x.shape[1] != d_in:
            raise DataError(f"a batch has shape {tuple(x.shape)}; expected [batch, d_in={d_in}]")
        parts.append(x[: max_rows - rows].detach().to("cpu", torch.float64).numpy())
        rows += parts[-1].shape[0]
        if rows >= max_rows:
            break
    if rows < 2:
        raise DataError(f"ICA needs at least 2 rows of data; the batches held {rows}")
    return np.concatenate(parts)


@register("ica")
class ICA(Dictionary):
    """Independent components. Weights: W_enc [n_latents, d_in] (unmixing rows scaled by their
    atom's norm), W_dec [n_latents, d_in] (unit mixing columns, by decreasing code standard
    deviation; zero rows beyond the components), b_dec [d_in] (the sample mean); buffer
    random_state [] (int64, FastICA's seed, drawn at construction)."""

    Config = ICAConfig
    trained_by = "fit"
    unit_norm_decoder = False  # fitted rows are unit norm, rows beyond the components are zero
    scales_with_input = ("b_dec",)  # W_enc = diag(|mixing_i|) unmixing is scale-free

    def __init__(self, cfg: ICAConfig):
        super().__init__(cfg)
        self.W_enc = nn.Parameter(torch.zeros(cfg.n_latents, cfg.d_in))
        self.W_dec = nn.Parameter(torch.zeros(cfg.n_latents, cfg.d_in))
        self.b_dec = nn.Parameter(torch.zeros(cfg.d_in))
        self.register_buffer("random_state", torch.randint(0, 2**31 - 1, (), dtype=torch.int64))

    def encode(self, x: Tensor) -> Tensor:
        return linear(x - self.b_dec, self.W_enc)

    @torch.no_grad()
    def fit(self, batches: Iterable[Tensor | tuple | Rows]) -> None:
        """Fit FastICA on the first `max_rows` rows of `batches`; replaces anything fitted
        before."""
        x = sample_rows(batches, self.d_in, self.cfg.max_rows)
        ica = self.fast_ica(x)
        mixing = ica.mixing_.T  # [n, d_in]: one atom per row
        norms = np.linalg.norm(mixing, axis=1)  # [n]: standard deviation of each code
        order = np.argsort(-norms, kind="stable")
        norms = np.where(norms > 0, norms, 1.0)[order]
        k = len(order)
        like = self.W_dec
        for weight, rows in ((self.W_dec, mixing[order] / norms[:, None]),
                             (self.W_enc, ica.components_[order] * norms[:, None])):
            weight.zero_()
            weight[:k] = torch.as_tensor(rows).to(like)
        self.b_dec.copy_(torch.as_tensor(ica.mean_).to(like))
        log.info("ica: %d components from %d rows in %d iterations", k, x.shape[0], ica.n_iter_)

    def fast_ica(self, x: np.ndarray):
        """scikit-learn's FastICA fitted on `x` [N, d_in], seeded by the `random_state` buffer;
        a run that did not converge is logged."""
        from sklearn.decomposition import FastICA
        from sklearn.exceptions import ConvergenceWarning

        cfg = self.cfg
        ica = FastICA(n_components=min(cfg.n_latents, cfg.d_in, x.shape[0]), fun=cfg.fun,
                      whiten="unit-variance", max_iter=cfg.max_iter, tol=cfg.tol,
                      random_state=int(self.random_state))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ConvergenceWarning)
            ica.fit(x)
        for w in caught:
            if issubclass(w.category, ConvergenceWarning):
                log.warning("ica: FastICA did not converge in max_iter=%d iterations (tol=%g); "
                            "raise max_iter or lower n_latents", cfg.max_iter, cfg.tol)
            else:
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        return ica
