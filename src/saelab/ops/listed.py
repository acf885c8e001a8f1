"""Selected entries of a [B, n] pre-activation matrix as per-row lists, and an encoder whose
backward touches only those entries.

Variants that pick a variable number of latents per row (BatchTopK, JumpReLU, Mutual and Feature
Choice, AbsTopK, Top-AFA) and the Zipf auxiliary loss choose entries of the dense pre-activations
x W_enc^T + b_enc (as sorted flat indices) and keep them as lists padded to the longest row:
`list_rows` makes the lists, `listed_encode` makes them differentiably, with an O(B m d) backward
instead of the dense O(B n d).
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import torch
from torch import Tensor

from saelab.ops.sparse import gather_rows, linear, scatter_rows, sparse_decode


class Listed(NamedTuple):
    """Selected entries of a [B, n] matrix as per-row lists, padded to the longest row."""

    values: Tensor
    """Values [B, m] (0 on padding)."""
    indices: Tensor
    """Column (latent) indices [B, m], int64 (0 on padding)."""
    valid: Tensor
    """Bool [B, m]: False on padding."""


def list_rows(pre: Tensor, chosen: Tensor) -> Listed:
    """Entries `chosen` of pre [B, n] (flat indices, in increasing order) as per-row lists;
    m is the largest count of any row (at least 1), and each row keeps the latent order."""
    b, n = pre.shape
    rows = torch.div(chosen, n, rounding_mode="floor")
    cols = chosen - rows * n
    counts = torch.bincount(rows, minlength=b)  # [B] entries per row
    starts = torch.cumsum(counts, 0) - counts  # [B] first entry of each row in `chosen`
    slot = torch.arange(chosen.numel(), device=pre.device) - starts[rows]  # position in its row
    width = max(1, int(counts.max()) if chosen.numel() > 0 else 0)  # >= 1: no empty bags
    values = pre.new_zeros(b, width)
    indices = torch.zeros(b, width, dtype=torch.long, device=pre.device)
    valid = torch.zeros(b, width, dtype=torch.bool, device=pre.device)
    values[rows, slot] = pre.reshape(-1)[chosen]
    indices[rows, slot] = cols
    valid[rows, slot] = True
    return Listed(values, indices, valid)


class _ListedEncode(torch.autograd.Function):
    """The entries of x W_enc^T + b_enc that `choose` picks, as lists; the backward touches only
    those entries (O(B m d) instead of the dense O(B n d))."""

    @staticmethod
    def forward(ctx, x: Tensor, W_enc: Tensor, b_enc: Tensor, choose: Callable[[Tensor], Tensor]):
        pre = linear(x, W_enc, b_enc)  # [B, n_latents], no autograd graph
        values, indices, valid = list_rows(pre, choose(pre))
        ctx.save_for_backward(x, W_enc, indices, valid)
        ctx.mark_non_differentiable(indices, valid)
        return values, indices, valid

    @staticmethod
    def backward(ctx, grad_values: Tensor, _grad_indices, _grad_valid):
        x, W_enc, indices, valid = ctx.saved_tensors
        g = grad_values * valid  # no gradient to the padding
        g_x = gather_rows(indices, g, W_enc) if ctx.needs_input_grad[0] else None
        g_W = scatter_rows(indices, g, x, W_enc.shape[0]) if ctx.needs_input_grad[1] else None
        g_b = None
        if ctx.needs_input_grad[2]:
            g_b = g.new_zeros(W_enc.shape[0]).index_add_(0, indices.reshape(-1), g.reshape(-1))
        return g_x, g_W, g_b, None


def listed_encode(x: Tensor, W_enc: Tensor, b_enc: Tensor,
                  choose: Callable[[Tensor], Tensor]) -> Listed:
    """Pre-activations x W_enc^T + b_enc [B, n] at the entries `choose(pre)` picks (sorted flat
    indices), as per-row lists whose gradient reaches x, W_enc and b_enc sparsely."""
    return Listed(*_ListedEncode.apply(x, W_enc, b_enc, choose))


DENSE_FRACTION = 0.07
"""`encode_above` keeps the whole [B, n] pre-activations (dense products) when more than this
fraction of the entries is above the floor, and per-row lists (sparse products) otherwise. A
JumpReLU step at d_in 768, 16,384 latents, batch 4,096 on 2 cores (2026-12-03, under other
jobs' load) took 16.2 s dense against 24.4 s listed at density 0.10 and 19.4 s against 12.4 s
at 0.05: the paths cross near 0.07."""


class Above(NamedTuple):
    """What `encode_above` gives: per-row lists, or the whole matrix when it is dense."""

    values: Tensor
    """Pre-activations: [B, m] lists (`fill` on padding), or [B, n] whole (`indices` None)."""
    indices: Tensor | None
    """Latent ids [B, m] of the listed entries; None when `values` is the whole matrix."""
    valid: Tensor | None
    """Bool [B, m]: False on padding; None when `values` is the whole matrix."""

    @property
    def dense(self) -> bool:
        return self.indices is None

    def at(self, per_latent: Tensor) -> Tensor:
        """A per-latent vector [n] shaped like `values`: whole, or at the listed latents."""
        return per_latent if self.dense else per_latent[self.indices]


class _EncodeAbove(torch.autograd.Function):
    """x W_enc^T + b_enc, listed above a floor or whole, with the matching backward: sparse
    (O(B m d)) for lists, two dense products for the whole matrix."""

    @staticmethod
    def forward(ctx, x: Tensor, W_enc: Tensor, b_enc: Tensor, floor: Tensor,
                dense_fraction: float):
        pre = linear(x, W_enc, b_enc)  # [B, n_latents], no autograd graph
        above = pre > floor
        ctx.dense = bool(above.float().mean() > dense_fraction)
        if ctx.dense:
            ctx.save_for_backward(x, W_enc)
            empty = pre.new_empty(0, dtype=torch.long)
            ctx.mark_non_differentiable(empty)
            return pre, empty, empty.bool()
        values, indices, valid = list_rows(pre, above.view(-1).nonzero().squeeze(1))
        ctx.save_for_backward(x, W_enc, indices, valid)
        ctx.mark_non_differentiable(indices, valid)
        return values, indices, valid

    @staticmethod
    def backward(ctx, grad_values: Tensor, _grad_indices, _grad_valid):
        if not ctx.dense:
            return (*_ListedEncode.backward(ctx, grad_values, None, None)[:3], None, None)
        x, W_enc = ctx.saved_tensors
        g = grad_values.to(x.dtype)
        g_x = g @ W_enc if ctx.needs_input_grad[0] else None
        g_W = g.t() @ x if ctx.needs_input_grad[1] else None
        g_b = g.sum(0) if ctx.needs_input_grad[2] else None
        return g_x, g_W, g_b, None, None


def encode_above(x: Tensor, W_enc: Tensor, b_enc: Tensor, floor: Tensor | float,
                 fill: float = 0.0, dense_fraction: float | None = None) -> Above:
    """The pre-activations x W_enc^T + b_enc that exceed `floor` (per latent [n], or one
    number), for variants whose codes are zero, with zero gradient, at or below a floor (ReLU:
    0; JumpReLU: the threshold minus half the kernel width). Sparse batches come back as per-row
    lists (padding `fill`) with a sparse backward; a batch with more than `dense_fraction` of
    its entries above the floor (early in training) comes back whole, with dense products, where
    lists would cost more than the matrix (default `DENSE_FRACTION`). Entries at or below the floor are then present with
    their values: what is computed from them must give them no code and no gradient (as ReLU and
    JumpReLU do), so that both forms give the same loss and gradients."""
    floor = torch.as_tensor(floor, dtype=x.dtype, device=x.device)
    dense_fraction = DENSE_FRACTION if dense_fraction is None else dense_fraction
    values, indices, valid = _EncodeAbove.apply(x, W_enc, b_enc, floor, dense_fraction)
    if indices.dim() == 1:  # the whole matrix
        return Above(values, None, None)
    return Above(values.masked_fill(~valid, fill) if fill != 0 else values, indices, valid)


def decode_above(codes: Tensor, above: Above, W_dec: Tensor) -> Tensor:
    """sum_i codes[b, i] W_dec[i] for codes shaped like `above.values` (without the bias)."""
    if above.dense:
        return codes @ W_dec
    return sparse_decode(codes, above.indices, W_dec)


def fired_latents(fired: Tensor, above: Above, n_latents: int) -> Tensor:
    """Bool [n_latents]: the latents with a True entry of `fired` (shaped like `above.values`)."""
    if above.dense:
        return fired.any(0)
    active = torch.zeros(n_latents, dtype=torch.bool, device=fired.device)
    active[above.indices[fired]] = True
    return active
