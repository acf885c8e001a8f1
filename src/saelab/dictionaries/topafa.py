"""Top-AFA SAE (Lee, Davies, Canby and Hockenmaier 2025, "Evaluating and Designing Sparse
Autoencoders by Approximating Quasi-Orthogonality").

Under the linear representation and superposition hypotheses a dense vector z is a sparse
combination of nearly orthogonal unit atoms, so the norm of its code f is close to ||z|| (the
approximate feature activation, AFA; bounds in saelab.ops.afa). The top-AFA activation uses this
in place of k: per input it keeps the largest contributions (ReLU(pre_i) ||w_i||)^2 in
decreasing order for as long as adding one brings the code's norm closer to ||z||, so the number
of active latents follows the input. Relative to TopK: no k; the count of active latents is
chosen per input by norm matching, and an AFA loss (||f|| - ||z||)^2 keeps code norms matched.

Reference: github.com/SewoongLee/top-afa-sae, `training/sae.py` (TopAFASAE.forward and its
get_loss_dict) and `training/config.py`, `training/main.ipynb` (afa_coeff 1/128 .. 1/16).
As the authors compute it (the defaults here):
- the selection's z is the encoder's input x - b_dec (the release's x_cent);
- the AFA loss is afa_coeff * mean over rows of (||f|| - ||x||)^2 with the target the norm of the
  input x itself, not of x - b_dec (`afa_target` "input"), and it sits next to a reconstruction
  term that is a mean over the d_out features (the release's l2_loss); saelab's MSE is a sum
  over features, so the authors' weighting here is afa_coeff * d_out (`afa_weight`
  "per_feature_mse"); with saelab's earlier "summed_mse" the same afa_coeff is d_out times
  weaker.
saelab's options: `afa_target` "centered" (||x - b_dec||, the same z as the selection) and
`afa_weight` "summed_mse" (afa_coeff as given against the summed MSE).

Where this file differs from the release (kept, saelab's TopK recipe): the encoder has a bias
b_enc (the release computes ReLU((x - b_dec) W_enc) without one), the inputs are scaled to unit
mean squared norm by the trainer (the release standardises each row), `k_max` caps the number
of latents one input may take (default n_latents, i.e. no cap); dead latents are revived by AuxK
with saelab's normalisation; encoder on x - b_dec, tied initialisation, unit-norm decoder rows,
sparse training (the backward touches only the selected entries), as for TopK.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

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
    afa_coeff: float = option(1 / 32, "Weight of the AFA loss (||f|| - ||target||)^2.")
    afa_target: Literal["input", "centered"] = option(
        "input", "Norm the AFA loss pulls ||f|| to: input ||x|| (the authors') or centered "
                 "||x - b_dec|| (saelab's).")
    afa_weight: Literal["per_feature_mse", "summed_mse"] = option(
        "per_feature_mse", "per_feature_mse: afa_coeff against a per-feature mean MSE (the "
                           "authors'; afa_coeff * d_out here); summed_mse (saelab's): as given.")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.k_max is None:
            self.k_max = self.n_latents
        check(isinstance(self.k_max, int) and not isinstance(self.k_max, bool)
              and 0 < self.k_max <= self.n_latents, "k_max",
              f"must be an integer in [1, n_latents={self.n_latents}], got {self.k_max!r}")
        check(self.afa_coeff >= 0, "afa_coeff", f"must be >= 0, got {self.afa_coeff}")
        check(self.afa_target in ("input", "centered"), "afa_target",
              f"must be 'input' or 'centered', got {self.afa_target!r}")
        check(self.afa_weight in ("per_feature_mse", "summed_mse"), "afa_weight",
              f"must be 'per_feature_mse' or 'summed_mse', got {self.afa_weight!r}")


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

    def afa_scale(self) -> float:
        """Weight of the AFA loss next to saelab's summed MSE: afa_coeff x d_out for the
        authors' per-feature mean MSE, afa_coeff for saelab's summed one."""
        per_feature = self.cfg.afa_weight == "per_feature_mse"
        return self.cfg.afa_coeff * (self.cfg.d_out if per_feature else 1)

    def afa_loss(self, x: Tensor, xc: Tensor, values: Tensor, indices: Tensor) -> Tensor:
        """Mean over rows of (||f|| - ||target||)^2 for the listed codes `values` [B, L] at
        latents `indices` [B, L] (||f|| with each code times its decoder row's norm, which is 1
        during training), target x or x - b_dec (`afa_target`)."""
        scaled = values * self.W_dec.norm(dim=-1)[indices]
        f_norm = scaled.pow(2).sum(-1).clamp_min(1e-12).sqrt()
        target = x if self.cfg.afa_target == "input" else xc
        return (f_norm - target.detach().norm(dim=-1)).pow(2).mean()

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
        afa = self.afa_loss(x, xc, values * valid, indices)
        terms = {"mse": mse, "afa": afa}
        total = mse + self.afa_scale() * afa
        total = add_auxk(terms, total, self.cfg, state.dead_mask, xc, target, x_hat, self.W_enc,
                         self.b_enc, self.W_dec)
        fired = valid & (values.detach() > 0)
        active = torch.zeros(self.n_latents, dtype=torch.bool, device=x.device)
        active[indices[fired]] = True
        l0 = fired.sum(-1).float()
        metrics = {"fvu": fvu(x_hat.detach(), target).item(), "l0": l0.mean().item(),
                   "l0_min": l0.min().item(), "l0_max": l0.max().item()}
        return Loss(total, terms, metrics, active)
