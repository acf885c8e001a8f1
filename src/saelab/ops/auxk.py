"""AuxK: the auxiliary loss that revives dead latents (Gao et al. 2024, "Scaling and evaluating
sparse autoencoders", appendix A.2). The top k_aux dead latents reconstruct the main residual."""

from __future__ import annotations

from torch import Tensor

from saelab.ops.sparse import sparse_decode


def auxk_loss(x_centered: Tensor, residual: Tensor, W_enc: Tensor, b_enc: Tensor, W_dec: Tensor,
              dead_mask: Tensor, k_aux: int, rectify: bool = True) -> Tensor:
    """Normalised MSE of the dead latents' TopK reconstruction of `residual` [B, d_out].

    Only the dead rows of W_enc are multiplied (a small product when few latents are dead);
    the loss is divided by the residual's variance so its scale does not shrink with the main
    loss. The top codes go through a ReLU, as in Gao et al.'s reference code; `rectify=False`
    keeps them signed (SAELens' form), so a latent whose pre-activations are all negative still
    gets a gradient. Returns 0 when no latent is dead.
    """
    dead = dead_mask.nonzero().squeeze(1)
    if dead.numel() == 0:
        return x_centered.new_zeros(())
    pre = x_centered @ W_enc[dead].t() + b_enc[dead]  # [B, n_dead]
    values, indices = pre.topk(min(k_aux, dead.numel()), dim=-1, sorted=False)
    e_hat = sparse_decode(values.relu() if rectify else values, indices, W_dec[dead])
    residual = residual.detach()
    scale = (residual - residual.mean(0)).pow(2).sum(-1).mean().clamp_min(1e-12)
    return (e_hat - residual).pow(2).sum(-1).mean() / scale
