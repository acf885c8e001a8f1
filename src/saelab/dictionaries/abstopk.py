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
    AuxKConfig,
    Dictionary,
    Loss,
    StepState,
    check_k,
    fvu,
    squared_error,
)
from saelab.dictionaries._registry import register
from saelab.ops import sparse_decode
from saelab.ops.auxk import add_auxk
from saelab.ops.listed import listed_encode


@dataclass
class AbsTopKConfig(AuxKConfig):
    k: int = option(32, "Number of active latents per input (largest |pre-activation|, signed).")

    def __post_init__(self) -> None:
        super().__post_init__()
        check_k(self)


def abs_topk_chosen(pre: Tensor, k: int) -> Tensor:
    """Flat indices (increasing) of the k entries of largest magnitude in each row of pre
    [B, n]."""
    b, n = pre.shape
    idx = pre.abs().topk(k, dim=-1, sorted=False).indices  # [B, k]
    flat = idx + torch.arange(b, device=pre.device)[:, None] * n  # [B, k] flat indices
    return torch.sort(flat.reshape(-1)).values


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
        xc = self.centered(x)
        k = self.cfg.k
        values, indices, _ = listed_encode(xc, self.W_enc, self.b_enc,
                                           lambda pre: abs_topk_chosen(pre, k))
        x_hat = sparse_decode(values, indices, self.W_dec) + self.b_dec
        mse = squared_error(x_hat, target).mean()
        terms = {"mse": mse}
        # signed AuxK: the dead latents' largest pre-activations in magnitude, with their sign
        total = add_auxk(terms, mse, self.cfg, state.dead_mask, xc, target, x_hat, self.W_enc,
                         self.b_enc, self.W_dec, codes="magnitude")
        fired = values.detach() != 0
        active = torch.zeros(self.n_latents, dtype=torch.bool, device=x.device)
        active[indices[fired]] = True
        metrics = {"fvu": fvu(x_hat.detach(), target).item(),
                   "l0": fired.sum(-1).float().mean().item(),
                   "negative_fraction": (values.detach() < 0).float().mean().item()}
        return Loss(total, terms, metrics, active)
