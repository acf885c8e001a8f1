"""Sparsity as an allocation of (token, latent) pairs over a batch (Ayonrinde 2024, "Adaptive
Sparse Allocation with Mutual Choice & Feature Choice Sparse Autoencoders").

A batch of B inputs and n latents has B x n possible (input, latent) matches; a sparse code
picks some of them. TopK picks k per input; Mutual Choice picks the k x B largest anywhere (the
same selection as BatchTopK, Bussmann et al. 2024: `batch_topk_chosen`); Feature Choice
lets each latent pick its m largest inputs. These functions return the picked entries as sorted
flat indices into the [B, n] pre-activations, the form `listed_encode` takes.
"""

from __future__ import annotations

import torch
from torch import Tensor


def batch_topk_chosen(pre: Tensor, k: int) -> Tensor:
    """Flat indices (increasing) of the k x B largest positive entries of pre [B, n]; among
    equal values at the cutoff, the first in row-major order are kept."""
    b, n = pre.shape
    total = min(k * b, b * n)
    flat = pre.reshape(-1)  # [B*n], entry e = (row e // n, latent e % n)
    pool = batch_pool(pre, total)  # increasing flat indices that hold the top `total`
    vals = flat[pool]
    if pool.numel() > total:
        cutoff = vals.topk(total, sorted=False).values.min()
        above = vals > cutoff
        ties = vals == cutoff  # keep the first (total - #above) of these
        keep = above | (ties & (torch.cumsum(ties, 0) <= total - int(above.sum())))
        pool, vals = pool[keep], vals[keep]
    return pool[vals > 0]  # the ReLU: non-positive entries are never active


def batch_pool(pre: Tensor, total: int) -> Tensor:
    """Increasing flat indices of a set of entries of pre [B, n] that holds its `total` largest
    entries (or all its positive ones), and not many more.

    A flattened top-k over B*n entries is slow (on the CPU, twice the encoder's product for
    4,096 x 4,608). Instead: each row's 2k largest entries are candidates; the total-th largest
    candidate is a lower bound of the total-th largest entry (candidates are a subset), so every
    entry at or above it is in the pool. Rows that need more than 2k latents are still exact:
    their extra entries are above the bound too. On Gaussian pre-activations the pool is the
    top `total` plus a few; with k candidates per row it would be about twice that.
    """
    b, n = pre.shape
    per_row = min(n, max(1, 2 * total // b))
    candidates = pre.topk(per_row, dim=-1, sorted=False).values.reshape(-1)  # [B * per_row]
    floor = candidates.topk(total, sorted=False).values.min()
    keep = pre.reshape(-1) >= floor if floor > 0 else pre.reshape(-1) > 0
    return keep.nonzero().squeeze(1)


def feature_capacity(k: float, batch: int, n_latents: int, offset: int = 0) -> Tensor:
    """Tokens per latent m_i [n_latents] (int64) for a uniform split that spends exactly the
    budget k x batch (at most n_latents x batch): every latent gets floor(k B / n) and the
    remainder r goes one each to r consecutive latents starting at `offset` (mod n), so that a
    caller who advances the offset every batch shares the remainder out evenly. Rounding k B / n
    to one common m instead would spend n x round(k B / n): 80% of the budget at k B / n = 2.5."""
    budget = min(int(round(k * batch)), n_latents * batch)
    base, extra = divmod(budget, n_latents)
    caps = torch.full((n_latents,), base, dtype=torch.long)
    caps[(torch.arange(extra) + offset) % n_latents] += 1
    return caps


def largest_remainder(shares: Tensor, total: int) -> Tensor:
    """Integers [n] (int64) that add up to exactly `total` and differ from the non-negative real
    `shares` [n] (which add up to about `total`) by less than one each: the floors, plus one for
    the entries with the largest fractional parts (ties by index) until the total is reached
    (or minus one for the smallest, when rounding pushed the floors past it)."""
    floors = shares.floor()
    frac = shares - floors
    caps = floors.long()
    missing = total - int(caps.sum())
    if missing > 0:
        caps[torch.sort(-frac, stable=True).indices[:missing]] += 1
    elif missing < 0:
        caps[torch.sort(frac, stable=True).indices[:-missing]] -= 1
    return caps


def zipf_capacities(k: float, batch: int, n_latents: int, exponent: float = 1.0) -> Tensor:
    """Tokens per latent m_i [n_latents] (int64) in Zipf shape by latent index, m_i ~ s (i + 1)
    ^ -exponent, each in [1, batch] (in [0, batch] when the budget is below one per latent), that
    add up to exactly the budget k x batch (at most n_latents x batch): the scale s is found by
    bisection so that the clipped real shares add up to the budget, then the shares are rounded
    by largest remainder."""
    weights = torch.arange(1, n_latents + 1, dtype=torch.float64) ** -exponent
    budget = min(int(round(k * batch)), n_latents * batch)
    low = 1.0 if budget >= n_latents else 0.0

    def shares(scale: float) -> Tensor:
        return (weights * scale).clamp(low, batch)

    lo, hi = 0.0, float(batch) / float(weights[-1])  # shares(hi) is all `batch`
    for _ in range(100):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if float(shares(mid).sum()) < budget else (lo, mid)
    caps = largest_remainder(shares(hi), budget)
    return caps.clamp(int(low), batch)  # largest_remainder moves entries by at most one


def feature_choice_chosen(pre: Tensor, m: int | Tensor) -> Tensor:
    """Flat indices (increasing) of each column's m largest positive entries of pre [B, n] (m
    one number, or one per latent [n]): latent i picks at most m_i inputs."""
    b, n = pre.shape
    if isinstance(m, Tensor):
        m = m.to(pre.device).clamp(max=b)
        top = pre.topk(int(m.max()), dim=0, sorted=True)  # [max m, n], largest first
        rank = torch.arange(top.values.shape[0], device=pre.device)[:, None]
        keep = (top.values > 0) & (rank < m[None, :])  # [max m, n]
    else:
        top = pre.topk(min(m, b), dim=0, sorted=False)  # values, row indices: [m, n]
        keep = top.values > 0
    flat = top.indices * n + torch.arange(n, device=pre.device)[None, :]  # [m, n] flat
    return torch.sort(flat[keep]).values


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
