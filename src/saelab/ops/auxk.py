"""AuxK: the auxiliary loss that revives dead latents (Gao et al. 2024, "Scaling and evaluating
sparse autoencoders", appendix A.2). The top k_aux dead latents reconstruct the main residual.

`auxk_loss` is the term itself; `auxk_term` and `add_auxk` are what a variant's loss calls: they
apply the one gate every variant shares (AuxK is on, the trainer tracks dead latents, and some
are dead), so a variant states only which encoder the dead latents are read through.
"""

from __future__ import annotations

from typing import Protocol

from torch import Tensor

from saelab.ops.sparse import sparse_decode

CODES = ("relu", "signed", "magnitude")
"""How the dead latents' codes are taken (`auxk_loss`)."""


class AuxKSettings(Protocol):
    """What `add_auxk` reads from a config (`saelab.dictionaries.AuxKConfig` has both)."""

    auxk_coeff: float
    auxk_k: int


def auxk_loss(x_centered: Tensor, residual: Tensor, W_enc: Tensor, b_enc: Tensor | None,
              W_dec: Tensor, dead_mask: Tensor, k_aux: int, codes: str = "relu") -> Tensor:
    """Normalised MSE of the dead latents' TopK reconstruction of `residual` [B, d_out].

    Only the dead rows of W_enc are multiplied (a small product when few latents are dead);
    the loss is divided by the residual's variance so its scale does not shrink with the main
    loss. `codes`:
    - "relu": the k_aux largest pre-activations through a ReLU, as in Gao et al.'s reference code;
    - "signed": the k_aux largest, kept signed (SAELens' form), so a latent whose
      pre-activations are all negative still gets a gradient;
    - "magnitude": the k_aux largest in magnitude, signed (for signed codes, AbsTopK).
    `b_enc` None: an encoder without bias. Returns 0 when no latent is dead.
    """
    dead = dead_mask.nonzero().squeeze(1)
    if dead.numel() == 0:
        return x_centered.new_zeros(())
    pre = x_centered @ W_enc[dead].t()  # [B, n_dead]
    if b_enc is not None:
        pre = pre + b_enc[dead]
    k = min(k_aux, dead.numel())
    if codes == "magnitude":
        indices = pre.abs().topk(k, dim=-1, sorted=False).indices
        values = pre.gather(1, indices)
    else:
        values, indices = pre.topk(k, dim=-1, sorted=False)
        values = values.relu() if codes == "relu" else values
    e_hat = sparse_decode(values, indices, W_dec[dead])
    residual = residual.detach()
    scale = (residual - residual.mean(0)).pow(2).sum(-1).mean().clamp_min(1e-12)
    return (e_hat - residual).pow(2).sum(-1).mean() / scale


def auxk_term(coeff: float, k_aux: int, dead_mask: Tensor | None, x_centered: Tensor,
              residual: Tensor, W_enc: Tensor, b_enc: Tensor | None, W_dec: Tensor,
              codes: str = "relu") -> Tensor | None:
    """`auxk_loss`, or None when AuxK is off this step: `coeff` is 0, the trainer does not track
    dead latents (`dead_mask` None), or none is dead."""
    if coeff <= 0 or dead_mask is None or not dead_mask.any():
        return None
    return auxk_loss(x_centered, residual, W_enc, b_enc, W_dec, dead_mask, k_aux, codes)


def add_auxk(terms: dict[str, Tensor], total: Tensor, cfg: AuxKSettings,
             dead_mask: Tensor | None, x_centered: Tensor, target: Tensor, x_hat: Tensor,
             W_enc: Tensor, b_enc: Tensor | None, W_dec: Tensor, codes: str = "relu") -> Tensor:
    """`total` + cfg.auxk_coeff x AuxK of the residual `target - x_hat` (detached), recording the
    term as terms["auxk"], when AuxK is on this step (see `auxk_term`); `total` otherwise. The
    dead latents are read through the encoder (W_enc, b_enc) from `x_centered`."""
    if cfg.auxk_coeff <= 0 or dead_mask is None or not dead_mask.any():
        return total
    terms["auxk"] = auxk_loss(x_centered, target - x_hat.detach(), W_enc, b_enc, W_dec,
                              dead_mask, cfg.auxk_k, codes)
    return total + cfg.auxk_coeff * terms["auxk"]
