"""BatchTopK codes as flat lists, and per-bag sums of decoder rows (Matryoshka SAEs).

BatchTopK (Bussmann et al. 2024) gives rows different numbers of latents, so the kept codes are
flat lists in row-major order; embedding_bag sums them per bag (a row, or a row and a group of
latents), so one decode can give several partial reconstructions at once. The encoder's
backward touches only the kept codes: O(k B d) instead of O(B n d).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from saelab.ops.sparse import linear


class BatchCodes(NamedTuple):
    """The codes BatchTopK kept in a batch, as flat lists in row-major order (rows in turn,
    latents increasing within a row); rows keep different numbers of latents."""

    values: Tensor
    """Code values [N] (0 where ReLU clipped a selected pre-activation)."""
    rows: Tensor
    """Batch row of each code [N] (int64, non-decreasing)."""
    latents: Tensor
    """Latent of each code [N] (int64)."""


def _sorted_ints(keys: Tensor) -> Tensor:
    """Ascending sort of distinct integer keys (numpy on the CPU: torch's parallel radix sort
    stalls when another process keeps a core busy)."""
    if keys.device.type == "cpu":
        return torch.from_numpy(np.sort(keys.numpy()))
    return keys.sort().values


def _stable_order(keys: Tensor) -> Tensor:
    if keys.device.type == "cpu":
        return torch.from_numpy(np.argsort(keys.numpy(), kind="stable"))
    return torch.argsort(keys, stable=True)


@torch.no_grad()
def batch_topk(pre: Tensor, k: int, floor: float = 0.0) -> BatchCodes:
    """BatchTopK selection (Bussmann et al. 2024): the k x B largest entries of ReLU(pre) over
    the whole batch pre [B, n] (exactly min(k B, B n) of them).

    `floor` > 0 is a guess of a value below the selection's smallest (such as half the running
    threshold): the top entries are then sought among those above it, which is much faster than
    over all B n entries, and the full search runs only when too few pass it. The result is the
    same either way.
    """
    b, n = pre.shape
    flat = pre.reshape(-1)  # [B*n], entry e = (row e // n, latent e % n)
    total = min(k * b, flat.numel())
    chosen = None
    if floor > 0:
        candidates = (flat > floor).nonzero().squeeze(1)
        if candidates.numel() >= total:
            chosen = candidates[flat[candidates].topk(total, sorted=False).indices]
    if chosen is None:
        chosen = flat.topk(total, sorted=False).indices
    chosen = _sorted_ints(chosen)  # row-major order
    rows = torch.div(chosen, n, rounding_mode="floor")
    return BatchCodes(flat[chosen].relu(), rows, chosen - rows * n)


def _bag_starts(bag_of_entry: Tensor, n_bags: int) -> Tensor:
    """Start of each bag [n_bags] in a list of entries sorted by bag (empty bags allowed)."""
    counts = torch.bincount(bag_of_entry, minlength=n_bags)
    return torch.cumsum(counts, 0) - counts


def _gather_sum(indices: Tensor, weights: Tensor, table: Tensor, bag_of_entry: Tensor,
                n_bags: int) -> Tensor:
    """out[j] = sum over entries e of bag j of weights[e] * table[indices[e]], [n_bags, d]
    (entries sorted by bag)."""
    return F.embedding_bag(indices, table.contiguous(), _bag_starts(bag_of_entry, n_bags),
                           mode="sum", per_sample_weights=weights.to(table.dtype))


def _scatter_sum(indices: Tensor, weights: Tensor, rows: Tensor, bag_of_entry: Tensor,
                 n: int) -> Tensor:
    """out[i] = sum over entries e with indices[e] = i of weights[e] * rows[bag_of_entry[e]],
    [n, d]: the transpose of `_gather_sum`, done as a gather over entries sorted by index."""
    order = _stable_order(indices)
    return _gather_sum(bag_of_entry[order], weights[order], rows, indices[order], n)


_HAS_DOTS_KERNEL = hasattr(torch.ops.aten, "_embedding_bag_per_sample_weights_backward")


def _entry_dots(indices: Tensor, table: Tensor, rows: Tensor, bag_of_entry: Tensor) -> Tensor:
    """out[e] = <table[indices[e]], rows[bag_of_entry[e]]>, [N] (entries sorted by bag): the
    gradient of `_gather_sum` with respect to its weights."""
    if _HAS_DOTS_KERNEL:
        return torch.ops.aten._embedding_bag_per_sample_weights_backward(
            rows.contiguous(), table.contiguous(), indices,
            _bag_starts(bag_of_entry, rows.shape[0]), bag_of_entry, 0)  # mode 0: sum
    out = rows.new_empty(indices.shape[0])
    for s in range(0, indices.shape[0], 4096):  # a chunk of gathered rows at a time
        e = slice(s, s + 4096)
        out[e] = (table[indices[e]] * rows[bag_of_entry[e]]).sum(-1)
    return out


class _BatchTopKEncode(torch.autograd.Function):
    """BatchTopK codes of x W_enc^T + b_enc; the backward touches only the kept codes."""

    @staticmethod
    def forward(ctx, x: Tensor, W_enc: Tensor, b_enc: Tensor, k: int, floor: float):
        codes = batch_topk(linear(x, W_enc, b_enc), k, floor)
        ctx.save_for_backward(x, W_enc, *codes)
        ctx.mark_non_differentiable(codes.rows, codes.latents)
        return tuple(codes)

    @staticmethod
    def backward(ctx, grad_values: Tensor, _grad_rows, _grad_latents):
        x, W_enc, values, rows, latents = ctx.saved_tensors
        g = grad_values * (values > 0)  # ReLU's gradient
        g_x = (_gather_sum(latents, g, W_enc, rows, x.shape[0]) if ctx.needs_input_grad[0]
               else None)
        g_W = (_scatter_sum(latents, g, x, rows, W_enc.shape[0]) if ctx.needs_input_grad[1]
               else None)
        g_b = g.new_zeros(W_enc.shape[0]).index_add_(0, latents, g) \
            if ctx.needs_input_grad[2] else None
        return g_x, g_W, g_b, None, None


class _BagDecode(torch.autograd.Function):
    """Sums of values x W_dec rows per bag [n_bags, d_out]; O(N d_out) forward and backward."""

    @staticmethod
    def forward(ctx, values: Tensor, latents: Tensor, bags: Tensor, n_bags: int, W_dec: Tensor):
        ctx.save_for_backward(values, latents, bags, W_dec)
        return _gather_sum(latents, values, W_dec, bags, n_bags)

    @staticmethod
    def backward(ctx, grad: Tensor):
        values, latents, bags, W_dec = ctx.saved_tensors
        grad = grad.contiguous()
        g_values = _entry_dots(latents, W_dec, grad, bags) if ctx.needs_input_grad[0] else None
        g_W = (_scatter_sum(latents, values, grad, bags, W_dec.shape[0])
               if ctx.needs_input_grad[4] else None)
        return g_values, None, None, None, g_W


def batch_topk_encode(x: Tensor, W_enc: Tensor, b_enc: Tensor, k: int, floor: float = 0.0
                      ) -> BatchCodes:
    """BatchTopK codes of x W_enc^T + b_enc as flat lists (`batch_topk`); differentiable in the
    values, with a backward that touches only the kept codes."""
    return BatchCodes(*_BatchTopKEncode.apply(x, W_enc, b_enc, k, floor))


def bag_decode(values: Tensor, latents: Tensor, bags: Tensor, n_bags: int, W_dec: Tensor
               ) -> Tensor:
    """sum over entries e of bag j of values[e] * W_dec[latents[e]], [n_bags, d_out] (entries
    sorted by bag); O(N d_out) forward and backward."""
    return _BagDecode.apply(values, latents, bags, n_bags, W_dec)
