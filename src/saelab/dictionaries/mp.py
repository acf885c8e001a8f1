"""MP-SAE (Costa, Fel, Lubana, Tolooshams and Ba 2025, "From Flat to Hierarchical: Extracting
Sparse Representations with Matching Pursuit").

Relative to a TopK SAE, the one-shot encoder is replaced by k unrolled matching-pursuit steps on
the decoder's own atoms: each step picks the atom best aligned with the current residual, codes it
with that inner product and subtracts its contribution, so every later choice is conditioned on
the earlier ones (the residual is orthogonal to the atom just chosen and its norm never grows).
There is no encoder matrix: the dictionary W_dec [n_latents, d] is tied to the encoder.
`encode(x, k=...)` and `forward(x, k=...)` may take another number of steps at inference
(adaptive sparsity), and `residual_tol` stops a row once its residual is small enough.

Choices where the paper leaves room:
- Selection: `selection="positive"` (default) picks the largest inner product and clips the code
  at zero, as the authors' code and SAELens do (codes stay non-negative like any SAE's; a row
  whose best inner product is <= 0 gets a zero code for that step); `"absolute"` is classic MP
  (largest |inner product|, codes of either sign).
- The code of atom i is <W_dec_i, r> / |W_dec_i|^2: the inner product for the unit-norm atoms
  the trainer keeps, and still an orthogonal projection if a loaded dictionary is not unit-norm.
  An atom picked twice accumulates its codes.
- Training backpropagates through the unrolled steps, as the paper does: the argmax is a
  constant of the step (no gradient), gradients flow through each inner product and residual
  update and through the decoder. The atoms are chosen in a pass without autograd (scores
  updated through the atoms' Gram matrix where it is small enough, 256 rows at a time), then
  the k chosen inner products are replayed with autograd, so the backward costs O(B k d), not
  O(B k n_latents d).
- The residual starts at x - b_dec (b_dec initialised to the data mean, like the TopK SAE's).
- Dead atoms: AuxK (on by default, as in the TopK family; the paper's authors also recommend an
  auxiliary revival loss) lets the top `auxk_k` dead atoms, ranked by their inner product with
  the final residual, reconstruct that residual.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from saelab.config import check, option
from saelab.dictionaries._base import (
    AuxKConfig,
    Dictionary,
    Loss,
    Output,
    StepState,
    check_k,
    fvu,
    squared_error,
    unit_rows,
)
from saelab.dictionaries._registry import register
from saelab.ops import SparseCodes, sparse_decode
from saelab.ops.auxk import add_auxk
from saelab.ops.matching_pursuit import matching_pursuit

SELECTIONS = ("positive", "absolute")


@dataclass
class MPConfig(AuxKConfig):
    k: int = option(32, "Matching-pursuit steps per input (atoms selected; inference may use "
                        "another number).")
    selection: Literal["positive", "absolute"] = option(
        "positive", "'positive': largest inner product, codes >= 0 (the paper's code); 'absolute': "
                    "largest |inner product| (classic MP, signed codes).")
    residual_tol: float = option(0.0, "Stop a row early once |residual| <= residual_tol * "
                                      "|x - b_dec| (0: always take k steps).")

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.d_out == self.d_in, "d_out",
              f"must equal d_in={self.d_in} (MP-SAE reconstructs its input), got {self.d_out}")
        check_k(self)
        check(self.selection in SELECTIONS, "selection",
              f"must be one of {', '.join(SELECTIONS)}, got {self.selection!r}")
        check(0 <= self.residual_tol < 1, "residual_tol",
              f"must be in [0, 1), got {self.residual_tol}")


class Pursuit(NamedTuple):
    """The result of matching pursuit on a batch."""

    codes: SparseCodes
    """values [B, steps] and indices [B, steps] in the order the atoms were chosen (an index may
    repeat; a value is 0 where a row stopped or its best inner product was <= 0)."""
    residual: Tensor
    """x - b_dec minus the atoms' contributions [B, d]: what is left unexplained."""


def _replay(xc: Tensor, W: Tensor, indices: Tensor, kept: Tensor) -> tuple[Tensor, Tensor]:
    """The codes of the chosen atoms recomputed with autograd: values [B, steps], residual.

    The choice of atom is fixed (straight through the argmax); each code is the inner product of
    its atom with the residual left by the previous steps, so gradients reach W_dec and b_dec
    through every step. `kept` [B, steps] zeroes the codes the pursuit clipped or stopped.
    """
    atoms = F.embedding(indices, W)  # [B, steps, d]: the chosen atoms, one gather
    inv_sq = torch.linalg.vecdot(W, W).clamp_min(1e-24).reciprocal()  # [n_latents]: 1/|W_i|^2
    scale = inv_sq[indices] * kept  # [B, steps]
    # unbind: one backward for all steps (indexing atoms[:, t] would zero-fill [B, steps, d]
    # in the backward of every step)
    r = xc
    values = []
    for atom, s in zip(atoms.unbind(1), scale.unbind(1)):
        z = torch.linalg.vecdot(atom, r) * s  # [B]
        r = torch.addcmul(r, z[:, None], atom, value=-1)
        values.append(z)
    return torch.stack(values, dim=1), r


def _dense(codes: SparseCodes, n_latents: int) -> Tensor:
    """Dense codes [B, n_latents]; an atom chosen twice gets the sum of its codes."""
    out = codes.values.new_zeros(codes.values.shape[0], n_latents)
    return out.scatter_add(1, codes.indices, codes.values)


def _distinct_nonzero(codes: SparseCodes) -> Tensor:
    """Number of distinct atoms with a non-zero code in each row [B] (the row's L0)."""
    idx = codes.indices.masked_fill(codes.values == 0, -1).sort(dim=1).values  # [B, steps]
    new = torch.ones_like(idx, dtype=torch.bool)
    new[:, 1:] = idx[:, 1:] != idx[:, :-1]
    return (new & (idx >= 0)).sum(dim=1)


@register("mp")
class MP(Dictionary):
    """Matching-pursuit SAE. Weights: W_dec [n_latents, d_in] (atoms, also the encoder),
    b_dec [d_in]."""

    Config = MPConfig
    scales_with_input = ("b_dec",)

    def __init__(self, cfg: MPConfig):
        super().__init__(cfg)
        self.W_dec = nn.Parameter(unit_rows(cfg.n_latents, cfg.d_in))
        self.b_dec = nn.Parameter(torch.zeros(cfg.d_in))

    def pursue(self, x: Tensor, k: int | None = None, tol: float | None = None) -> Pursuit:
        """Run `k` pursuit steps (default cfg.k) on inputs [B, d_in]; rows stop early once
        |residual| <= tol * |x - b_dec| (default cfg.residual_tol)."""
        k = self.cfg.k if k is None else k
        tol = self.cfg.residual_tol if tol is None else tol
        check(isinstance(k, int) and not isinstance(k, bool) and k > 0, "k",
              f"must be a positive integer number of pursuit steps, got {k!r}")
        check(0 <= tol < 1, "tol", f"must be in [0, 1), got {tol}")
        xc = x - self.b_dec
        values, indices = matching_pursuit(xc.detach(), self.W_dec.detach(), k,
                                           self.cfg.selection == "absolute", tol)
        if torch.is_grad_enabled() and (xc.requires_grad or self.W_dec.requires_grad):
            values, residual = _replay(xc, self.W_dec, indices, values != 0)
        else:
            residual = xc - sparse_decode(values, indices, self.W_dec)
        return Pursuit(SparseCodes(values, indices), residual)

    def encode(self, x: Tensor, k: int | None = None, tol: float | None = None) -> Tensor:
        """Dense codes [B, n_latents] after `k` pursuit steps (default cfg.k)."""
        return _dense(self.pursue(x, k, tol).codes, self.n_latents)

    def forward(self, x: Tensor, k: int | None = None, tol: float | None = None) -> Output:
        codes = self.pursue(x, k, tol).codes
        x_hat = sparse_decode(codes.values, codes.indices, self.W_dec) + self.b_dec
        return Output(x_hat, _dense(codes, self.n_latents))

    def loss(self, x: Tensor, state: StepState, target: Tensor | None = None) -> Loss:
        target = x if target is None else target
        codes, residual = self.pursue(x)
        x_hat = sparse_decode(codes.values, codes.indices, self.W_dec) + self.b_dec
        mse = squared_error(x_hat, target).mean()
        terms = {"mse": mse}
        # dead atoms ranked by their inner product with the residual (the tied "encoder", no bias)
        total = add_auxk(terms, mse, self.cfg, state.dead_mask, residual.detach(), target, x_hat,
                         self.W_dec, None, self.W_dec)
        fired = codes.values != 0
        active = torch.bincount(codes.indices.reshape(-1), weights=fired.reshape(-1).float(),
                                minlength=self.n_latents) > 0
        metrics = {"fvu": fvu(x_hat.detach(), target).item(),
                   "l0": _distinct_nonzero(codes).float().mean().item()}
        return Loss(total, terms, metrics, active)
