"""AbsTopK SAE (Zhu, Khalili and Zhu 2025, "AbsTopK: Rethinking Sparse Autoencoders For
Bidirectional Features").

Deriving SAEs as one unrolled proximal-gradient step of sparse coding, the paper notes that the
ReLU, JumpReLU and TopK activations all come from regularisers that force codes to be
non-negative, so a concept with two opposite poles (male / female) needs two latents. With a
plain L0 constraint the proximal step is hard thresholding: keep the k pre-activations largest
in *magnitude*, with their sign. Relative to TopK: selection by |pre| instead of pre, no ReLU,
so codes are signed and one decoder atom is used in both directions.

Where this file had to choose:
- Encoder on x - b_dec with tied initialisation and unit-norm decoder rows, as for TopK.
- Dead latents are revived by AuxK adapted to signed codes: the dead latents' k_aux largest
  pre-activations *in magnitude*, signed, reconstruct the residual (the plain AuxK keeps only
  positive ones, which would leave a latent whose pre-activations are all negative dead).
- Training is sparse: the dense encoder product is made once without autograd, and the backward
  touches only the k selected entries of each row (`listed_encode`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from saelab.config import option
from saelab.dictionaries._base import (
    Dictionary,
    DictionaryConfig,
    Loss,
    StepState,
    check_auxk,
    check_k,
    fvu,
    squared_error,
)
from saelab.dictionaries._registry import register
from saelab.dictionaries.jumprelu import listed_encode
from saelab.ops import sparse_decode


@dataclass
class AbsTopKConfig(DictionaryConfig):
    k: int = option(32, "Number of active latents per input (largest |pre-activation|, signed).")
    auxk_coeff: float = option(1 / 32, "Weight of the signed AuxK dead-latent loss (0 disables).")
    auxk_k: int | None = option(None, "Latents used by AuxK; default d_in // 2.")

    def __post_init__(self) -> None:
        super().__post_init__()
        check_k(self)
        check_auxk(self)


def abs_topk_chosen(pre: Tensor, k: int) -> Tensor:
    """Flat indices (increasing) of the k entries of largest magnitude in each row of pre
    [B, n]."""
    b, n = pre.shape
    idx = pre.abs().topk(k, dim=-1, sorted=False).indices  # [B, k]
    flat = idx + torch.arange(b, device=pre.device)[:, None] * n  # [B, k] flat indices
    return torch.sort(flat.reshape(-1)).values


def signed_auxk_loss(x_centered: Tensor, residual: Tensor, W_enc: Tensor, b_enc: Tensor,
                     W_dec: Tensor, dead_mask: Tensor, k_aux: int) -> Tensor:
    """AuxK with signed codes: the dead latents' k_aux largest-magnitude pre-activations
    reconstruct `residual` [B, d_out]; normalised MSE (0 when nothing is dead)."""
    dead = dead_mask.nonzero().squeeze(1)
    if dead.numel() == 0:
        return x_centered.new_zeros(())
    pre = x_centered @ W_enc[dead].t() + b_enc[dead]  # [B, n_dead]
    idx = pre.abs().topk(min(k_aux, dead.numel()), dim=-1, sorted=False).indices
    e_hat = sparse_decode(pre.gather(1, idx), idx, W_dec[dead])
    residual = residual.detach()
    scale = (residual - residual.mean(0)).pow(2).sum(-1).mean().clamp_min(1e-12)
    return (e_hat - residual).pow(2).sum(-1).mean() / scale


@register("abstopk")
class AbsTopK(Dictionary):
    """AbsTopK SAE with signed AuxK. Weights: W_enc [n_latents, d_in], b_enc [n_latents],
    W_dec [n_latents, d_out], b_dec [d_out]."""

    Config = AbsTopKConfig
    scales_with_input = ("b_enc", "b_dec")

    def __init__(self, cfg: AbsTopKConfig):
        super().__init__(cfg)
        self.init_tied_weights()

    def encode(self, x: Tensor) -> Tensor:
        pre = self.pre_activations(x)
        idx = pre.abs().topk(self.cfg.k, dim=-1, sorted=False).indices  # [B, k]
        return torch.zeros_like(pre).scatter_(1, idx, pre.gather(1, idx))

    def loss(self, x: Tensor, state: StepState, target: Tensor | None = None) -> Loss:
        target = x if target is None else target
        xc = self._centered(x)
        k = self.cfg.k
        values, indices, _ = listed_encode(xc, self.W_enc, self.b_enc,
                                           lambda pre: abs_topk_chosen(pre, k))
        x_hat = sparse_decode(values, indices, self.W_dec) + self.b_dec
        mse = squared_error(x_hat, target).mean()
        terms, total = {"mse": mse}, mse
        if self.cfg.auxk_coeff > 0 and state.dead_mask is not None and state.dead_mask.any():
            terms["auxk"] = signed_auxk_loss(xc, target - x_hat.detach(), self.W_enc,
                                             self.b_enc, self.W_dec, state.dead_mask,
                                             self.cfg.auxk_k)
            total = total + self.cfg.auxk_coeff * terms["auxk"]
        fired = values.detach() != 0
        active = torch.zeros(self.n_latents, dtype=torch.bool, device=x.device)
        active[indices[fired]] = True
        metrics = {"fvu": fvu(x_hat.detach(), target).item(),
                   "l0": fired.sum(-1).float().mean().item(),
                   "negative_fraction": (values.detach() < 0).float().mean().item()}
        return Loss(total, terms, metrics, active)
