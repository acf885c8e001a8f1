"""aux_zipf_loss: an auxiliary loss that pulls feature usage towards a Zipf shape (Ayonrinde 2024,
"Adaptive Sparse Allocation with Mutual Choice & Feature Choice Sparse Autoencoders").

AuxK (Gao et al. 2024) lets the *dead* latents reconstruct the main residual, which gives them a
gradient and a chance to come back. The paper observes that healthy feature usage is closer to a
Zipf law (the r-th most used feature fires with frequency proportional to r^-alpha) and
generalises AuxK from "dead" to "used less than the Zipf law says". Here:

- `usage` is a running estimate of each latent's firing frequency (fraction of inputs), kept by
  the dictionary as a buffer and updated with `update_usage`;
- `zipf_targets` redistributes the same total usage (the mean L0) over the latents in Zipf shape,
  keeping the current rank order: target_r = L0 * r^-alpha / sum_j j^-alpha (at most 1);
- `zipf_deficit` is how far below its target each latent is, in [0, 1]: 1 - usage / target,
  clipped at 0. A dead latent has deficit 1, one at or above its target 0;
- `aux_zipf_loss`: in each row, the k_aux latents with the largest deficit-weighted
  pre-activation, among those used less than half their Zipf share (deficit > min_deficit,
  0.5 by default), reconstruct the residual (normalised MSE, as AuxK). With deficits that are
  exactly 1 for dead latents and 0 otherwise this is AuxK; with graded deficits an
  under-used latent is picked in proportion to how under-used it is.

Where this file had to choose (the paper's exact weighting is not reproduced here):
- the deficit weights the *selection* only; the selected codes are the plain ReLU
  pre-activations, so the gradient is the AuxK gradient;
- latents only a little below their target take no part (min_deficit): letting them in pulls
  the decoder rows of healthy, frequent latents towards the residual, and in a small run on
  planted data (512 latents, 256 planted directions, mutual choice, weight 0.5) that flattened
  the head of the usage curve and *raised* the dead fraction from 0.21 to 0.55; with
  min_deficit 0.5 the same run lowered it to 0.08;
- the pre-activations are made once without autograd and the backward touches only the
  selected entries (`listed_encode`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from saelab.ops.listed import listed_encode
from saelab.ops.sparse import sparse_decode


@torch.no_grad()
def update_usage(usage: Tensor, batches: Tensor, fired_per_latent: Tensor, n_rows: int,
                 decay: float) -> None:
    """Fold this batch's firing frequency (counts [n_latents] over `n_rows` inputs) into the
    running `usage` [n_latents]; `batches` [] counts the batches seen. The weight of the newest
    batch is max(1 - decay, 1 / batches): an equal average over the first batches, then an
    exponential moving average."""
    batches += 1
    weight = max(1.0 - decay, 1.0 / int(batches))
    usage.lerp_(fired_per_latent.to(usage.dtype) / max(1, n_rows), weight)


def zipf_targets(usage: Tensor, exponent: float = 1.0) -> Tensor:
    """Target frequency [n_latents] of each latent: the total of `usage` spread in Zipf shape
    (rank r gets r^-exponent), ranks taken from the current usage (ties by index), each at
    most 1."""
    n = usage.numel()
    order = torch.sort(usage, descending=True, stable=True).indices  # [n] latents by usage
    shape = torch.arange(1, n + 1, dtype=usage.dtype, device=usage.device) ** -exponent
    total = usage.sum()
    targets = torch.empty_like(usage)
    targets[order] = (total * shape / shape.sum()).clamp(max=1.0)
    return targets


def zipf_deficit(usage: Tensor, exponent: float = 1.0) -> Tensor:
    """How far each latent's usage is below its Zipf target, in [0, 1] [n_latents]
    (0 when nothing fired at all)."""
    targets = zipf_targets(usage, exponent)
    return (1.0 - usage / targets.clamp_min(1e-12)).clamp(0.0, 1.0) * (targets > 0)


def aux_zipf_loss(x_centered: Tensor, residual: Tensor, W_enc: Tensor, b_enc: Tensor,
                  W_dec: Tensor, deficit: Tensor, k_aux: int, min_deficit: float = 0.5) -> Tensor:
    """Normalised MSE of the reconstruction of `residual` [B, d_out] by, in each row, the k_aux
    latents with the largest deficit x ReLU(pre-activation), among the latents whose deficit
    exceeds `min_deficit` (used less than 1 - min_deficit of their Zipf share). Returns 0 when
    no latent qualifies."""
    weight = torch.where(deficit > min_deficit, deficit, torch.zeros_like(deficit)).detach()
    if not bool((weight > 0).any()):
        return x_centered.new_zeros(())
    k = min(k_aux, int((weight > 0).sum()))

    def choose(pre: Tensor) -> Tensor:
        score = pre.clamp_min(0) * weight  # [B, n]: 0 for latents at or above target
        top = score.topk(k, dim=-1, sorted=False)
        b, n = pre.shape
        flat = top.indices + torch.arange(b, device=pre.device)[:, None] * n  # [B, k] flat
        flat = flat[top.values > 0]
        return torch.sort(flat).values

    values, indices, valid = listed_encode(x_centered, W_enc, b_enc, choose)
    e_hat = sparse_decode(values.clamp_min(0) * valid, indices, W_dec)
    residual = residual.detach()
    scale = (residual - residual.mean(0)).pow(2).sum(-1).mean().clamp_min(1e-12)
    return (e_hat - residual).pow(2).sum(-1).mean() / scale


def zipf_distance(frequencies: Tensor, floor: float, exponent: float = 1.0) -> float:
    """How far a rank-frequency curve is from its Zipf law, on the log scale a Zipf plot uses:
    the mean over ranks of |log10 f_r - log10 t_r|, with f the sorted frequencies
    [n_latents], t = zipf_targets(f) (the same total in Zipf shape), both clipped below at
    `floor` (e.g. 1 / number of inputs, so a dead latent counts as seen once). 0 when the
    usage is exactly Zipf-shaped."""
    f = torch.sort(frequencies.double(), descending=True).values
    t = torch.sort(zipf_targets(f, exponent), descending=True).values
    return float((f.clamp_min(floor).log10() - t.clamp_min(floor).log10()).abs().mean())


# --- plumbing any variant can use: buffers on the dictionary, one call in its loss -----------

def register_usage_buffers(module: torch.nn.Module, n_latents: int) -> None:
    """Add the buffers aux_zipf_loss needs to a dictionary (saved with its weights): `usage`
    [n_latents] (running firing frequency), `usage_batches` [] (batches folded in) and
    `usage_step` [] (the last training step folded in, -1 for none)."""
    module.register_buffer("usage", torch.zeros(n_latents))
    module.register_buffer("usage_batches", torch.zeros((), dtype=torch.long))
    module.register_buffer("usage_step", torch.full((), -1, dtype=torch.long))


def zipf_aux_term(module: torch.nn.Module, x_centered: Tensor, residual: Tensor,
                  active_indices: Tensor, step: int, *, exponent: float, decay: float,
                  k_aux: int, min_deficit: float = 0.5) -> Tensor:
    """Update `module.usage` with this batch's active latents (flat indices of every active
    (row, latent) pair's latent, once per training step and only in training mode), then return
    aux_zipf_loss against the updated usage. The update comes first so that calling the loss
    twice in one step (a line search, a test) sees the same deficits both times."""
    if module.training and int(module.usage_step) != step:
        counts = torch.bincount(active_indices.reshape(-1), minlength=module.usage.numel())
        update_usage(module.usage, module.usage_batches, counts, x_centered.shape[0], decay)
        module.usage_step.fill_(step)
    if int(module.usage_batches) == 0:
        return x_centered.new_zeros(())
    deficit = zipf_deficit(module.usage, exponent)
    return aux_zipf_loss(x_centered, residual, module.W_enc, module.b_enc, module.W_dec,
                         deficit, k_aux, min_deficit)
