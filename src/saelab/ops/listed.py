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

from saelab.ops.sparse import gather_rows, linear, scatter_rows


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
