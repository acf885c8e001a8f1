"""Top-AFA SAE (Lee, Davies, Canby and Hockenmaier 2025, "Evaluating and Designing Sparse
Autoencoders by Approximating Quasi-Orthogonality").

Under the linear representation and superposition hypotheses a dense vector z is a sparse
combination of nearly orthogonal unit atoms, so the norm of its code f is close to ||z|| (the
approximate feature activation, AFA; bounds in saelab.ops.afa). The top-AFA activation uses this
in place of k: per input it keeps the largest contributions (ReLU(pre_i) ||w_i||)^2 in
decreasing order for as long as adding one brings the code's norm closer to ||z||, so the number
of active latents follows the input. Relative to TopK: no k; the count of active latents is
chosen per input by norm matching, and an AFA loss (||f|| - ||z||)^2 keeps code norms matched.

Where this file had to choose:
- z is the encoder's input x - b_dec (what the atoms have to explain; the decoder bias is not an
  atom), for transcoders (d_in != d_out) the input x itself.
- The AFA loss uses the same z, weighted by `afa_coeff`, next to the MSE.
- `k_max` caps the number of latents one input may take (it bounds the sort: only the k_max
  largest contributions are ranked); default n_latents, i.e. no cap.
- Dead latents are revived by AuxK; encoder on x - b_dec, tied initialisation, unit-norm decoder
  rows, sparse training (the backward touches only the selected entries), as for TopK.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from saelab.config import check, option
from saelab.dictionaries._base import (
    AuxKConfig,
    Dictionary,
    Loss,
    StepState,
    fvu,
    squared_error,
)
from saelab.dictionaries._registry import register
from saelab.ops import linear, sparse_decode
from saelab.ops.afa import top_afa_chosen
from saelab.ops.auxk import add_auxk
from saelab.ops.listed import list_rows, listed_encode


@dataclass
class TopAFAConfig(AuxKConfig):
    k_max: int | None = option(None, "Most latents one input may use; default n_latents.")
    afa_coeff: float = option(1 / 32, "Weight of the AFA loss (||f|| - ||x - b_dec||)^2.")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.k_max is None:
            self.k_max = self.n_latents
        check(isinstance(self.k_max, int) and not isinstance(self.k_max, bool)
              and 0 < self.k_max <= self.n_latents, "k_max",
              f"must be an integer in [1, n_latents={self.n_latents}], got {self.k_max!r}")
        check(self.afa_coeff >= 0, "afa_coeff", f"must be >= 0, got {self.afa_coeff}")


@register("topafa")
class TopAFA(Dictionary):
    """Top-AFA SAE with AuxK. Weights: W_enc [n_latents, d_in], b_enc [n_latents],
    W_dec [n_latents, d_out], b_dec [d_out]."""

    Config = TopAFAConfig
    scales_with_input = ("b_enc", "b_dec")

    def __init__(self, cfg: TopAFAConfig):
        super().__init__(cfg)
        self.init_tied_weights()

    def _chooser(self, xc: Tensor):
        z_norm = xc.detach().norm(dim=-1)  # [B]: the AFA of each input
        dec_norms = self.W_dec.detach().norm(dim=-1)  # [n_latents]
        return lambda pre: top_afa_chosen(pre, z_norm, dec_norms, self.cfg.k_max)

    def encode(self, x: Tensor) -> Tensor:
        xc = self.centered(x)
        pre = linear(xc, self.W_enc, self.b_enc)
        values, indices, _ = list_rows(pre, self._chooser(xc)(pre))
        return values.new_zeros(pre.shape).scatter_add_(1, indices, values)

    def loss(self, x: Tensor, state: StepState, target: Tensor | None = None) -> Loss:
        target = x if target is None else target
        xc = self.centered(x)
        values, indices, valid = listed_encode(xc, self.W_enc, self.b_enc, self._chooser(xc))
        x_hat = sparse_decode(values, indices, self.W_dec) + self.b_dec
        mse = squared_error(x_hat, target).mean()
        f_norm = (values * valid * self.W_dec.norm(dim=-1)[indices]).pow(2).sum(-1).clamp_min(1e-12).sqrt()
        afa = (f_norm - xc.detach().norm(dim=-1)).pow(2).mean()
        terms = {"mse": mse, "afa": afa}
        total = mse + self.cfg.afa_coeff * afa
        total = add_auxk(terms, total, self.cfg, state.dead_mask, xc, target, x_hat, self.W_enc,
                         self.b_enc, self.W_dec)
        fired = valid & (values.detach() > 0)
        active = torch.zeros(self.n_latents, dtype=torch.bool, device=x.device)
        active[indices[fired]] = True
        l0 = fired.sum(-1).float()
        metrics = {"fvu": fvu(x_hat.detach(), target).item(), "l0": l0.mean().item(),
                   "l0_min": l0.min().item(), "l0_max": l0.max().item()}
        return Loss(total, terms, metrics, active)
