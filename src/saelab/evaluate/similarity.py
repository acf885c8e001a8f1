"""Similarity of two dictionaries: how far their atoms match one to one, and how alike their codes
are on the same data.

Decoder matching follows the mean max cosine similarity (MMCS) of Sharkey, Braun and Millidge
(2022, "Taking features out of superposition with sparse autoencoders", interim report on the
AI Alignment Forum), made one-to-one with the Hungarian algorithm as in Paulo and Belrose (2025,
"Sparse Autoencoders Trained on the Same Data Learn Different Features"). The codes are compared
with linear CKA (Kornblith, Norouzi, Lee and Hinton 2019, "Similarity of Neural Network
Representations Revisited") and SVCCA (Raghu, Gilmer, Yosinski and Sohl-Dickstein 2017, "SVCCA:
Singular Vector Canonical Correlation Analysis for Deep Learning Dynamics and
Interpretability"); the ITDA Jaccard index is that of Leask, Nanda and Al Moubayed (2025,
"Inference-Time Decomposition of Activations (ITDA)").
"""

from __future__ import annotations

import logging
import math
from typing import NamedTuple

import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn

from saelab.errors import ConfigError, DataError
from saelab.evaluate._base import Context, Family
from saelab.evaluate._registry import register
from saelab.evaluate._sample import RowSample

log = logging.getLogger(__name__)

MAX_ROWS = 4096
"""Rows of the activation stream kept (a uniform random sample, by reservoir) on which the two
dictionaries' codes are compared by CKA and SVCCA. Both need all pairs of rows (Gram matrices
[MAX_ROWS, MAX_ROWS] in float64, 128 MiB each), and SVCCA an eigendecomposition of each."""
SVCCA_VARIANCE = 0.99
"""SVCCA keeps the leading directions of each dictionary's codes that explain this share of their
variance (Raghu et al. 2017) ..."""
SVCCA_MAX_DIMS = 20
"""... but at most this many, the number the ITDA authors' reference code uses: canonical
correlations grow by chance with the number of directions compared (they are all 1 once the two
sets of directions together outnumber the rows), and SAE codes need thousands of directions for
99% of their variance."""
MATCH_THRESHOLD = 0.9
"""Matched pairs with a cosine above this count in `matched_above_0_9`."""
GRAM_BLOCK = 512
"""Rows per block when the Gram matrix of the codes is built (dense codes of one block at a
time)."""


class Matching(NamedTuple):
    """One-to-one matching of two dictionaries' unit decoder atoms."""

    cosines: Tensor
    """Cosine of each matched pair [min(n_a, n_b)], float64."""
    max_cosines: Tensor
    """For each atom of the first dictionary, its largest cosine with any atom of the second
    [n_a] (Sharkey et al.'s MMCS averages these)."""


def match_atoms(w_a: Tensor, w_b: Tensor) -> Matching:
    """Hungarian matching of the rows of w_a [n_a, d] and w_b [n_b, d] (atoms, any norm) that
    maximises the summed cosine; zero atoms have cosine 0 with everything."""
    a = nn.functional.normalize(w_a.detach().double().cpu(), dim=-1)
    b = nn.functional.normalize(w_b.detach().double().cpu(), dim=-1)
    cos_ab = a @ b.T  # [n_a, n_b]
    rows, cols = linear_sum_assignment(cos_ab.numpy(), maximize=True)
    return Matching(cos_ab[torch.from_numpy(rows), torch.from_numpy(cols)], cos_ab.max(1).values)


@torch.no_grad()
def code_gram(dictionary, xs: Tensor, block: int = GRAM_BLOCK) -> Tensor:
    """Gram matrix C C^T [m, m] (float64, CPU) of the dictionary's codes C of the rows xs
    [m, d_in], holding the codes of all rows only as sparse tensors."""
    parts = [dictionary(b).codes.double().to_sparse() for b in xs.split(block)]
    gram = torch.empty(len(xs), len(xs), dtype=torch.float64)
    start = 0
    for q in parts:  # one block of columns at a time: [m, rows of block q]
        dense = q.to_dense().T
        gram[:, start:start + dense.shape[1]] = torch.cat(
            [torch.sparse.mm(p, dense) for p in parts]).cpu()
        start += dense.shape[1]
    return gram


def unbiased_hsic(k: Tensor, m: Tensor) -> float:
    """The unbiased estimator of HSIC of Song et al. (2012, "Feature Selection via Dependence
    Maximization") from two symmetric Gram matrices [n, n], n >= 4, computed without copies of
    them: with K~, M~ the Gram matrices with their diagonals zeroed,
    [tr(K~ M~) + 1'K~1 1'M~1 / ((n-1)(n-2)) - 2/(n-2) 1'K~M~1] / (n(n-3))."""
    n = k.shape[0]
    dk, dm = k.diagonal(), m.diagonal()
    rk, rm = k.sum(0) - dk, m.sum(0) - dm  # row sums of K~ and M~
    trace = float(torch.vdot(k.reshape(-1), m.reshape(-1)) - dk @ dm)
    total = trace + float(rk.sum()) * float(rm.sum()) / ((n - 1) * (n - 2)) \
        - 2 / (n - 2) * float(rk @ rm)
    return total / (n * (n - 3))


def linear_cka(k: Tensor, m: Tensor) -> float:
    """Linear CKA from the Gram matrices of two representations of the same rows, with the
    unbiased HSIC; NaN when either representation is constant or there are fewer than 4 rows."""
    if k.shape[0] < 4:
        return math.nan
    kk, mm = unbiased_hsic(k, k), unbiased_hsic(m, m)
    if kk <= 0 or mm <= 0:
        return math.nan
    return unbiased_hsic(k, m) / math.sqrt(kk * mm)


def _leading_directions(gram: Tensor) -> Tensor:
    """Orthonormal basis [m, k] (in row space) of the leading principal directions of the
    representation whose Gram matrix is `gram`: those explaining SVCCA_VARIANCE of its variance,
    at most SVCCA_MAX_DIMS."""
    means = gram.mean(0)
    centred = gram - means  # H K H, in place after this first copy
    centred -= means[:, None]
    centred += means.mean()
    scale = float(centred.diagonal().sum())
    if scale <= 0:
        return gram.new_zeros(gram.shape[0], 0)
    # float32 suffices for the leading directions and halves the time of the eigendecomposition
    centred = centred.div_(scale).float()
    values, vectors = torch.linalg.eigh(centred)  # ascending
    values, vectors = values.flip(0).double().clamp_min(0), vectors.flip(1).double()
    share = values.cumsum(0) / values.sum()
    k = int((share < SVCCA_VARIANCE).sum()) + 1
    return vectors[:, :min(k, SVCCA_MAX_DIMS)]


def svcca(k: Tensor, m: Tensor) -> float:
    """SVCCA from the Gram matrices of two representations of the same rows: the mean canonical
    correlation of their leading principal directions (the cosines of the principal angles
    between the two spans in row space); NaN when either representation is constant."""
    u_a, u_b = _leading_directions(k), _leading_directions(m)
    if u_a.shape[1] == 0 or u_b.shape[1] == 0:
        return math.nan
    corr = torch.linalg.svdvals(u_a.T @ u_b).clamp(0, 1)
    return float(corr.mean())


@register("similarity")
class Similarity(Family):
    """How alike two dictionaries are: their atoms matched one to one, their codes on the same
    data, and for two ITDA dictionaries the overlap of their atoms.

    Figures (under `report["similarity"]`):

    - `mmcs`: mean cosine of the unit decoder atoms over the pairs of a one-to-one (Hungarian)
      matching that maximises the summed cosine; 1 when the two dictionaries hold the same atoms
      in any order;
    - `matched_above_0_9`: fraction of the matched pairs whose cosine exceeds 0.9;
    - `max_cosine_mean`: for each atom of the dictionary evaluated, its largest cosine with any
      atom of `other`, averaged (the MMCS of Sharkey et al. 2022, not one-to-one);
    - `cka`: linear CKA of the two dictionaries' codes on the same rows (Kornblith et al. 2019),
      with the unbiased HSIC estimator (Song et al. 2012), so that independent codes give about 0
      however wide the codes are;
    - `svcca`: SVCCA of the codes (Raghu et al. 2017): the mean canonical correlation of the
      leading principal directions of each dictionary's codes (those explaining 99% of their
      variance, at most 20);
    - `itda_jaccard`: when both are ITDA dictionaries, the Jaccard index of the sets of data rows
      their atoms were taken from (Leask et al. 2025; `saelab.dictionaries.itda.itda_jaccard`,
      meaningful when both were fitted on the same rows in the same order); NaN otherwise;
    - `sample_rows`: the rows CKA and SVCCA were computed on.

    Both dictionaries must read activations of the same width and write the same width.

    From Python: `saelab.evaluate(sae, data, metrics=("similarity",), other=sae2)` (`other` is a
    dictionary or a folder/address `saelab.load` reads); from the command line:
    `saelab eval DICTIONARY STORE --metrics similarity --other DICTIONARY2`.

    Sample and cost: CKA and SVCCA need every pair of rows, so they run on a uniform random
    sample of at most `MAX_ROWS` = 4096 rows of the data (reservoir sampling during the shared
    pass; seeded by `evaluate`'s `seed`), the codes of both dictionaries held sparse. The
    matching builds the n_a x n_b cosine matrix (8 bytes per pair) and solves the assignment
    (scipy's `linear_sum_assignment`): about 1 s at 4k latents and 7 s at 8k on one core, growing
    a little under the cube of the width (around a minute and 2 GiB at 16k).

    Departures: Sharkey et al.'s MMCS takes each atom's best match, which several atoms may
    share; `mmcs` is one-to-one, as in Paulo and Belrose 2025, who align two SAEs with the
    Hungarian algorithm and look at their encoders as well as their decoders (this family uses
    the decoders only); the original MMCS is `max_cosine_mean`.
    CKA uses the unbiased HSIC rather than Kornblith et al.'s biased one, which stays far from 0
    for independent codes wider than the sample has rows (0.3 and more in saelab's tests). SVCCA caps the directions at 20, as the
    ITDA authors' reference code does (layer_similarity.py in github.com/davidkaczer/itda),
    where Raghu et al. keep all those explaining 99% of the variance.
    """

    needs = frozenset({"activations", "other"})
    figures = ("mmcs", "matched_above_0_9", "max_cosine_mean", "cka", "svcca", "itda_jaccard",
               "sample_rows")
    headline = ("mmcs", "matched_above_0_9", "cka", "svcca")
    conditional = ("itda_jaccard",)

    def __init__(self, context: Context) -> None:
        super().__init__(context)
        self.sample = RowSample(MAX_ROWS)

    @classmethod
    def check(cls, context: Context) -> None:
        a, b = context.dictionary, context.other
        for width in ("d_in", "d_out"):
            if getattr(a, width, None) != getattr(b, width, None):
                raise ConfigError(
                    f"similarity: the dictionaries differ in {width} ({a.architecture} has "
                    f"{getattr(a, width, None)}, other ({b.architecture}) has "
                    f"{getattr(b, width, None)}); compare two dictionaries of the same "
                    f"activation (pass --other / other= a dictionary trained on the same "
                    f"hookpoint)")

    def update(self, x: Tensor, target: Tensor, output: NamedTuple) -> None:
        self.sample.add(x)

    def result(self) -> dict[str, float]:
        a, b = self.context.dictionary, self.context.other
        matching = match_atoms(a.W_dec, b.W_dec)
        out = {"mmcs": float(matching.cosines.mean()),
               "matched_above_0_9": float((matching.cosines > MATCH_THRESHOLD).double().mean()),
               "max_cosine_mean": float(matching.max_cosines.mean()),
               "cka": math.nan, "svcca": math.nan, "itda_jaccard": _itda_jaccard(a, b),
               "sample_rows": len(self.sample)}
        if len(self.sample):
            (rows,) = self.sample.columns()
            k, m = code_gram(a, rows), code_gram(b, rows)
            out.update(cka=linear_cka(k, m), svcca=svcca(k, m))
        return out


def _itda_jaccard(a, b) -> float:
    """The ITDA Jaccard index of two ITDA dictionaries; NaN unless both are ITDA."""
    if a.architecture != "itda" or b.architecture != "itda":
        return math.nan
    from saelab.dictionaries.itda import itda_jaccard

    try:
        return float(itda_jaccard(a, b))
    except DataError as err:  # neither has any atom yet (unfitted)
        log.warning("similarity: no ITDA Jaccard index: %s", err)
        return math.nan


__all__ = ["Similarity", "match_atoms", "code_gram", "unbiased_hsic", "linear_cka", "svcca",
           "MAX_ROWS"]
