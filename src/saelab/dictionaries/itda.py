"""ITDA: Inference-Time Decomposition of Activations (Leask, Nanda and Al Moubayed 2025,
"Inference-Time Decomposition of Activations (ITDA): A Scalable Approach to Interpreting Large
Language Models", ICML 2025). Reference code: github.com/pleask/itda, read from its fork
davidkaczer/itda at commit 1f5de82 (`train.py`: `ITDA`, `ITDATrainer.update`, `mp_encode`;
`layer_similarity.py` and `model_similarity.py`: `get_similarity_measure`).

Relative to a TopK SAE, nothing is learned by gradient: the atoms are actual activations of the
data, chosen greedily in one streaming pass, and the encoder is matching pursuit over them. The
authors report fitting in about 1% of the time and on 1% of the data a SAE needs.

Fitting (one batch at a time, as the reference's `ITDATrainer.update`):

1. While the dictionary holds fewer than d_in atoms, the most frequent distinct rows of the batch
   are added first (up to d_in atoms in all), so repeated activations (a BOS token's) become
   atoms before anything else.
2. Every row of the batch is encoded by k steps of matching pursuit over the current atoms; its
   error is the mean over features of the squared difference between the row and its
   reconstruction, both scaled to unit norm: (2 - 2 cos(x, x_hat)) / d_in. Rows whose error is
   above `loss_threshold` are added as atoms, all at once (not re-checked against each other).
3. Atoms are the added rows scaled to unit norm. Growth stops at n_latents atoms; `fit` then
   stops reading.

Encoding: k steps of classic matching pursuit over the unit atoms (the largest |inner product|
with the residual, codes of either sign, an atom chosen twice adds its codes), `mp_encode` in
the reference. Decoding: codes @ W_dec; the authors have no decoder bias, so b_dec stays zero
(kept for the contract; the pursuit runs on x - b_dec and decode adds it back, so a loaded
dictionary with a non-zero b_dec stays consistent). Defaults are the authors': k = 40 and
loss_threshold = 0.0004 (their GPT-2 layer-similarity runs, d = 768: cos(x, x_hat) >= 0.85
there). The threshold is per feature, as theirs: the same value asks for a closer fit on a
narrower model (cos >= 1 - loss_threshold d_in / 2).

The Jaccard similarity of two ITDA dictionaries (`itda_jaccard`, the paper's representation
similarity measure, reported better than CKA and SVCCA at matching layers across models) is
|A n B| / |A u B| of the sets of data points their atoms came from: (sequence, position) pairs
in the reference, rows of the data stream here (`atom_rows`). It compares dictionaries fitted on
the same rows in the same order (two models, or two layers, over the same tokens); the reference
compares models by the union of their layers' sets, which `itda_jaccard` takes as sequences.
A floor to keep in mind: rows that no dictionary approximates yet, early in the stream, are
added by every dictionary whatever its data. When a first batch is added nearly whole, two
dictionaries of unrelated activations share it: Jaccard 0.95 measured between unrelated rank-24
data in 32 dimensions (k 40, loss_threshold 0.0004, batches of 512); 0.35 with batches of 64;
0.01-0.05 on rank-8 data with 2% of full-rank rows, whose first d_in atoms already meet the
threshold for the rest (tests/dictionaries/test_itda.py).

Where saelab departs from the reference:
- Capacity: when a batch has more rows above the threshold than free atoms, the worst
  approximated are taken first (the reference appends them all, then keeps the first
  n_latents in batch order).
- Exact duplicates among a batch's rows above the threshold are added once (the reference adds
  each copy); rows of zero norm are never added; ties in the frequency order of step 1 are broken
  by the rows' lexicographic order (torch.unique's), deterministically.
- Provenance: the reference records (global sequence index, token position); saelab's batches
  are rows, so it records the row's index in the stream `fit` read (`atom_rows`, see the class).
- Atoms beyond those found are zero rows with `atom_rows` = -1: the pursuit runs over the found
  atoms only, so their codes are always zero.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from saelab.config import check, option
from saelab.dictionaries._base import Dictionary, DictionaryConfig, Output, Rows, as_rows
from saelab.dictionaries._registry import register
from saelab.errors import ConfigError, DataError
from saelab.ops import SparseCodes, sparse_decode
from saelab.ops.matching_pursuit import matching_pursuit

log = logging.getLogger(__name__)


@dataclass
class ITDAConfig(DictionaryConfig):
    k: int = option(40, "Matching-pursuit steps per input, in fitting and encoding (the "
                        "authors' default 40); the L0 is at most k.")
    loss_threshold: float = option(
        0.0004, "A row is added as an atom when its error, mean over features of (x/|x| - "
                "x_hat/|x_hat|)^2 = (2 - 2 cos) / d_in, is above this (the authors' per-feature "
                "loss; 0.0004 in their GPT-2 runs).")

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.d_out == self.d_in, "d_out",
              f"must equal d_in={self.d_in} (ITDA reconstructs its input), got {self.d_out}")
        check(isinstance(self.k, int) and not isinstance(self.k, bool) and self.k > 0, "k",
              f"must be a positive integer number of pursuit steps, got {self.k!r}")
        check(isinstance(self.loss_threshold, (int, float))
              and not isinstance(self.loss_threshold, bool) and self.loss_threshold >= 0,
              "loss_threshold", f"must be a number >= 0, got {self.loss_threshold!r}")


@register("itda")
class ITDA(Dictionary):
    """Inference-Time Decomposition of Activations: atoms are rows of the data, encoding is
    matching pursuit with k steps.

    Weights: `W_dec` [n_latents, d_in] (unit atoms; zero rows where no atom was found),
    `b_dec` [d_in] (zero). Buffers: `atom_rows` [n_latents] (int64: the index, in the stream of
    rows `fit` read, of the row each atom came from; -1 for an unfilled atom) and `rows_seen`
    (rows read by `fit` so far; a second `fit` continues the numbering and the dictionary).

    From Python:

        d = saelab.create("itda", d_in=576, n_latents=16384, k=40)
        saelab.fit(d, "acts", saelab.TrainConfig(batch_size=4096, order="sequential"))
        codes = d.encode(x)   # signed codes, at most k non-zero per row
        saelab.dictionaries.itda.itda_jaccard(d, other_itda)

    From the command line: `saelab train acts --architecture itda --n-latents 16384 --k 40
    --order sequential`.

    Mapping an atom to its context (dashboards): `atom_rows[i]` counts rows in the order `fit`
    read them. When that order is the store's, the atom is the store row `atom_rows[i] % N`
    (N = `store.n_rows`; the modulo for later epochs), whose context and position are
    `store.row_index()["ctx"]`, `["pos"]` and `["token"]` at that row, and whose text is
    `store.contexts()["tokens"][ctx]`. The order is the store's with `order="sequential"`
    (FAST) in `saelab.fit`/`saelab train`, or `d.fit(acts for acts, _ in store.iter_rows())`;
    for a tensor, `d.fit(x.split(batch))` makes `atom_rows` index x's rows. Under the default
    shuffled order the index is a position in the shuffled stream, which the store cannot map
    back, and `itda_jaccard` is only meaningful between dictionaries that read the same stream.
    """

    Config = ITDAConfig
    trained_by = "fit"
    unit_norm_decoder = False  # unfilled atoms are zero rows
    scales_with_input = ("b_dec",)

    def __init__(self, cfg: ITDAConfig):
        super().__init__(cfg)
        self.W_dec = nn.Parameter(torch.zeros(cfg.n_latents, cfg.d_in), requires_grad=False)
        self.b_dec = nn.Parameter(torch.zeros(cfg.d_in), requires_grad=False)
        self.register_buffer("atom_rows", torch.full((cfg.n_latents,), -1, dtype=torch.long))
        self.register_buffer("rows_seen", torch.zeros((), dtype=torch.long))

    @property
    def n_atoms(self) -> int:
        """Atoms found so far (they fill W_dec from its first row)."""
        return int((self.atom_rows >= 0).sum())

    # --- encoding ---------------------------------------------------------------------------
    def pursue(self, x: Tensor, k: int | None = None) -> SparseCodes:
        """`k` matching-pursuit steps (default cfg.k) of inputs [B, d_in] over the atoms found:
        chosen atom indices and codes, [B, k] each, in the order chosen."""
        k = self.cfg.k if k is None else k
        check(isinstance(k, int) and not isinstance(k, bool) and k > 0, "k",
              f"must be a positive integer number of pursuit steps, got {k!r}")
        xc = (x - self.b_dec).to(self.W_dec.dtype)
        n = self.n_atoms
        if n == 0:
            zeros = xc.new_zeros(xc.shape[0], k)
            return SparseCodes(zeros, zeros.long())
        return matching_pursuit(xc.detach(), self.W_dec.detach()[:n], k, absolute=True)

    def encode(self, x: Tensor, k: int | None = None) -> Tensor:
        """Dense codes [B, n_latents] after `k` pursuit steps (default cfg.k); an atom chosen
        twice gets the sum of its codes."""
        codes = self.pursue(x, k)
        out = codes.values.new_zeros(codes.values.shape[0], self.n_latents)
        return out.scatter_add_(1, codes.indices, codes.values)

    def forward(self, x: Tensor, k: int | None = None) -> Output:
        codes = self.pursue(x, k)
        x_hat = sparse_decode(codes.values, codes.indices, self.W_dec) + self.b_dec
        dense = codes.values.new_zeros(codes.values.shape[0], self.n_latents)
        return Output(x_hat, dense.scatter_add_(1, codes.indices, codes.values))

    # --- fitting ----------------------------------------------------------------------------
    @torch.no_grad()
    def fit(self, batches: Iterable[Tensor | tuple | Rows]) -> None:
        """Grow the dictionary from batches of rows [B, d_in], in order, until it holds
        n_latents atoms (then stop reading) or the batches end."""
        for batch in batches:
            if self.n_atoms >= self.n_latents:
                break
            x = self.checked_rows(as_rows(batch).x)
            self.grow(x, int(self.rows_seen))
            self.rows_seen += x.shape[0]
        log.info("itda: %d of %d atoms from %d rows", self.n_atoms, self.n_latents,
                 int(self.rows_seen))

    def checked_rows(self, x: Tensor) -> Tensor:
        """A batch as rows [B, d_in] on the dictionary's device and dtype, or a DataError."""
        if x.ndim != 2 or x.shape[1] != self.d_in:
            raise DataError(f"itda.fit got a batch of shape {tuple(x.shape)}; expected "
                            f"[batch, d_in={self.d_in}]")
        x = x.to(self.W_dec.device, self.W_dec.dtype)
        if not torch.isfinite(x).all():
            raise DataError("itda.fit got non-finite values (NaN or inf) in a batch; check the "
                            "activations (saelab check STORE)")
        return x

    def grow(self, x: Tensor, first_row: int) -> None:
        """One step of the reference's `ITDATrainer.update` on rows x [B, d_in], whose first
        row is row `first_row` of the stream."""
        usable = x.norm(dim=1) > 0
        missing = min(self.d_in, self.n_latents) - self.n_atoms
        if missing > 0:
            self.add_atoms(x, frequent_rows(x, usable)[:missing], first_row)
        free = self.n_latents - self.n_atoms
        if free == 0:
            return
        errors = direction_errors(x, self(x).x_hat)  # [B]
        above = (errors > self.cfg.loss_threshold) & usable
        candidates = above.nonzero().flatten()
        candidates = candidates[first_copies(x[candidates])]
        worst = errors[candidates].argsort(descending=True, stable=True)[:free]
        self.add_atoms(x, candidates[worst], first_row)

    def add_atoms(self, x: Tensor, rows: Tensor, first_row: int) -> None:
        """Append rows `rows` of x as unit atoms, recording their stream indices."""
        n, m = self.n_atoms, rows.shape[0]
        if m == 0:
            return
        new = x[rows]
        self.W_dec[n:n + m] = new / new.norm(dim=1, keepdim=True)
        self.atom_rows[n:n + m] = rows.to(self.atom_rows.device) + first_row


def direction_errors(x: Tensor, x_hat: Tensor) -> Tensor:
    """The reference's per-row error [B]: mean over features of (x/|x| - x_hat/|x_hat|)^2."""
    unit = x / x.norm(dim=1, keepdim=True).clamp_min(1e-9)
    unit_hat = x_hat / x_hat.norm(dim=1, keepdim=True).clamp_min(1e-9)
    return (unit - unit_hat).pow(2).mean(dim=1)


def frequent_rows(x: Tensor, usable: Tensor) -> Tensor:
    """Indices of the first copy of each distinct usable row of x, most frequent first (ties in
    the lexicographic order of the rows)."""
    if not usable.any():
        return usable.nonzero().flatten()
    index = usable.nonzero().flatten()
    _, inverse, counts = torch.unique(x[index], dim=0, return_inverse=True, return_counts=True)
    first = torch.full_like(counts, index.shape[0]).scatter_reduce_(
        0, inverse, torch.arange(index.shape[0], device=x.device), "amin")
    order = counts.argsort(descending=True, stable=True)
    return index[first[order]]


def first_copies(x: Tensor) -> Tensor:
    """Bool [B]: True at the first occurrence of each distinct row of x."""
    if x.shape[0] == 0:
        return torch.zeros(0, dtype=torch.bool, device=x.device)
    _, inverse = torch.unique(x, dim=0, return_inverse=True)
    first = torch.full((int(inverse.max()) + 1,), x.shape[0], device=x.device).scatter_reduce_(
        0, inverse, torch.arange(x.shape[0], device=x.device), "amin")
    keep = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
    keep[first] = True
    return keep


def atom_sources(dictionaries: ITDA | Sequence[ITDA]) -> set[int]:
    """The stream rows the atoms of one ITDA dictionary, or of several united, came from."""
    group = [dictionaries] if isinstance(dictionaries, nn.Module) else list(dictionaries)
    for d in group:
        if not isinstance(d, ITDA):
            raise ConfigError(f"itda_jaccard compares ITDA dictionaries; got "
                              f"{getattr(d, 'architecture', type(d).__name__)!r}")
    return {int(r) for d in group for r in d.atom_rows.tolist() if r >= 0}


def itda_jaccard(a: ITDA | Sequence[ITDA], b: ITDA | Sequence[ITDA]) -> float:
    """Jaccard similarity |A n B| / |A u B| of the sets of data rows the atoms of `a` and `b`
    came from (Leask et al. 2025). 1 for a dictionary with itself; near 0 when the two chose
    different rows. A sequence of dictionaries (a model's layers) counts as the union of their
    sets, as in the paper's model comparison. Meaningful only between dictionaries fitted on the
    same rows in the same order (see `ITDA`)."""
    A, B = atom_sources(a), atom_sources(b)
    if not A and not B:
        raise DataError("itda_jaccard: neither side has any atom; fit the dictionaries first")
    return len(A & B) / len(A | B)
