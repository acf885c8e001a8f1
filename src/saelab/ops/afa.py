"""Approximate Feature Activation (AFA): the norm of a sparse code predicted from the norm of the
dense vector it encodes (Lee, Davies, Canby and Hockenmaier 2025, "Evaluating and Designing
Sparse Autoencoders by Approximating Quasi-Orthogonality").

If a dense vector z is a sparse combination z = sum_i f_i w_i of unit atoms that are
eps-quasi-orthogonal (|<w_i, w_j>| <= eps for i != j), then

    ||z||^2 = ||f||^2 + sum_{i != j} f_i f_j <w_i, w_j>,  and  |sum_{i != j} ...| <= eps (k - 1) ||f||^2

for a code with k non-zeros (Cauchy-Schwarz: (sum |f_i|)^2 <= k ||f||^2). So ||f|| ~ ||z||
(the AFA), with the closed-form bracket

    ||z|| / sqrt(1 + eps (k - 1))  <=  ||f||  <=  ||z|| / sqrt(1 - eps (k - 1))

(the upper end is unbounded once eps (k - 1) >= 1). The derivation here is this file's; the
paper states the same approximation with its own constants. `top_afa_chosen` is the top-AFA
activation: per input, add latents in decreasing order of their contribution until the code's
norm is closest to the AFA, so the number of active latents follows the input instead of a
fixed k.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor


class AFABounds(NamedTuple):
    """The bracket of ||f|| the AFA allows."""

    lower: Tensor
    """||z|| / sqrt(1 + eps (k - 1)), same shape as the inputs."""
    upper: Tensor
    """||z|| / sqrt(1 - eps (k - 1)); inf where eps (k - 1) >= 1."""


def afa_bounds(z_norm: Tensor, eps: float | Tensor, k: Tensor | int) -> AFABounds:
    """Bounds on the norm of a k-sparse code of a vector of norm `z_norm` over eps-quasi-orthogonal
    unit atoms (broadcasting over z_norm and k)."""
    spread = torch.as_tensor(eps, dtype=z_norm.dtype) * (torch.as_tensor(k, dtype=z_norm.dtype)
                                                         - 1).clamp_min(0)
    lower = z_norm / torch.sqrt(1 + spread)
    upper = torch.where(spread < 1, z_norm / torch.sqrt((1 - spread).clamp_min(1e-30)),
                        torch.full_like(z_norm * spread, float("inf")))
    return AFABounds(lower, upper)


def coherence(W_dec: Tensor) -> float:
    """eps of the dictionary: the largest |cosine| between two different rows of W_dec
    [n_latents, d] (chunked, so memory stays O(chunk x n_latents))."""
    W = W_dec / W_dec.norm(dim=1, keepdim=True).clamp_min(1e-12)
    n = W.shape[0]
    best = 0.0
    for start in range(0, n, 1024):
        block = (W[start:start + 1024] @ W.T).abs()  # [c, n]
        rows = torch.arange(block.shape[0], device=W.device)
        block[rows, rows + start] = 0  # not with itself
        best = max(best, float(block.max()))
    return best


def epsilon_lower_bound(z_hat_norm: Tensor, f_scaled: Tensor) -> Tensor:
    """Per input, the smallest eps consistent with a decoder output of norm z_hat_norm [B] made
    from codes f_scaled [B, n] (codes times decoder-row norms): |(||z||^2 - ||f||^2)| /
    sum_{i != j} |f_i f_j|; 0 for codes with fewer than two non-zeros."""
    sq = f_scaled.pow(2).sum(-1)
    cross = f_scaled.abs().sum(-1).pow(2) - sq  # sum over i != j of |f_i f_j|
    gap = ((z_hat_norm.pow(2) - sq).abs() - 1e-6 * sq).clamp_min(0)  # less float rounding
    return torch.where(cross > 0, gap / cross.clamp_min(1e-30), torch.zeros_like(gap))


def top_afa_counts(pre: Tensor, z_norm: Tensor, dec_norms: Tensor, k_max: int) -> tuple[Tensor,
                                                                                        Tensor]:
    """The top-AFA choice for pre-activations pre [B, n]: (latent indices [B, k_max] in
    decreasing order of contribution, count [B] of how many of them are active).

    Contributions are c_i = (ReLU(pre_i) ||w_i||)^2; with them sorted decreasingly, the count is
    the smallest j in [1, k_max] for which sqrt(c_1 + ... + c_j) is closest to z_norm (the AFA,
    up to rounding), never counting latents with c = 0.
    """
    contrib = (pre.clamp_min(0) * dec_norms).pow(2)  # [B, n]
    top = contrib.topk(min(k_max, pre.shape[1]), dim=-1, sorted=True)  # [B, k_max] decreasing
    norms = top.values.cumsum(-1).sqrt()  # [B, k_max] norm of the first j
    # the first j within rounding (relative 1e-6) of the best: a latent that does not move the
    # norm measurably is not added, and once contributions are 0 the norm stops changing
    dist = (norms - z_norm[:, None]).abs()  # [B, k_max]
    slack = dist.min(-1, keepdim=True).values + 1e-6 * z_norm[:, None] + 1e-12
    count = (dist <= slack).int().argmax(-1) + 1  # [B]: argmax finds the first True
    positive = (top.values > 0).sum(-1)
    return top.indices, torch.minimum(count, positive)


def top_afa_chosen(pre: Tensor, z_norm: Tensor, dec_norms: Tensor, k_max: int) -> Tensor:
    """Flat indices (increasing) into pre [B, n] of the top-AFA selection."""
    b, n = pre.shape
    indices, count = top_afa_counts(pre, z_norm, dec_norms, k_max)
    keep = torch.arange(indices.shape[1], device=pre.device)[None, :] < count[:, None]
    flat = indices + torch.arange(b, device=pre.device)[:, None] * n  # [B, k_max] flat
    return torch.sort(flat[keep]).values
