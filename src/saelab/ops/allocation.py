"""Sparsity as an allocation of (token, latent) pairs over a batch (Ayonrinde 2024, "Adaptive
Sparse Allocation with Mutual Choice & Feature Choice Sparse Autoencoders").

A batch of B inputs and n latents has B x n possible (input, latent) matches; a sparse code
picks some of them. TopK picks k per input; Mutual Choice picks the k x B largest anywhere (the
same selection as BatchTopK: `saelab.dictionaries.batchtopk.batch_topk_chosen`); Feature Choice
lets each latent pick its m largest inputs. These functions return the picked entries as sorted
flat indices into the [B, n] pre-activations, the form `listed_encode` takes.
"""

from __future__ import annotations

import torch
from torch import Tensor


def feature_capacity(k: float, batch: int, n_latents: int) -> int:
    """Tokens per latent m such that n_latents x m is the budget k x batch (rounded, at least
    1, at most batch)."""
    return max(1, min(batch, round(k * batch / n_latents)))


def feature_choice_chosen(pre: Tensor, m: int) -> Tensor:
    """Flat indices (increasing) of each column's m largest positive entries of pre [B, n]: every
    latent picks at most m inputs."""
    b, n = pre.shape
    m = min(m, b)
    top = pre.topk(m, dim=0, sorted=False)  # values, row indices: [m, n]
    flat = top.indices * n + torch.arange(n, device=pre.device)[None, :]  # [m, n] flat
    return torch.sort(flat[top.values > 0]).values


@torch.no_grad()
def update_running(value: Tensor, batches: Tensor, new: Tensor, decay: float,
                   mask: Tensor | None = None) -> None:
    """Running average of `new` into `value` (same shape), newest weight max(1 - decay,
    1 / batches) with `batches` the count of updates so far (incremented here); where `mask`
    is False, `value` keeps its old entry."""
    batches += 1
    weight = max(1.0 - decay, 1.0 / int(batches))
    mixed = torch.lerp(value, new.to(value.dtype), weight)
    value.copy_(mixed if mask is None else torch.where(mask, mixed, value))
