"""Sparse TopK encode and decode whose backward passes touch only the k active latents.

A dense TopK SAE step costs about six [B, n_latents] x [n_latents, d] products (forward and
backward of encoder and decoder). Only the forward encoder product is unavoidable: with k active
latents per row, everything else is O(B k d). These autograd functions do exactly that on the
CPU with embedding_bag (gather-and-sum of rows) and a sparse-transposed product (scatter-and-sum).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor


class SparseCodes(NamedTuple):
    """k active latents per row."""

    values: Tensor
    """Code values [B, k] (zero where the activation clipped them)."""
    indices: Tensor
    """Latent indices [B, k] (int64)."""


def to_dense(codes: SparseCodes, n_latents: int) -> Tensor:
    """Dense codes [B, n_latents] from sparse ones."""
    out = codes.values.new_zeros(codes.values.shape[0], n_latents)
    return out.scatter_(1, codes.indices, codes.values)


def topk_relu(pre: Tensor, k: int) -> SparseCodes:
    """The k largest pre-activations of each row, then ReLU (Gao et al. 2024, "Scaling and
    evaluating sparse autoencoders")."""
    values, indices = pre.topk(k, dim=-1, sorted=False)
    return SparseCodes(values.relu(), indices)


def scatter_rows(indices: Tensor, weights: Tensor, rows: Tensor, n: int) -> Tensor:
    """out[n, d] with out[indices[b, j]] += weights[b, j] * rows[b]: the transpose of a gather.

    Done as one sparse [n, B] x dense [B, d] product (O(B k d)), not a dense scatter.
    """
    b, k = indices.shape
    sample = torch.arange(b, device=indices.device).repeat_interleave(k)  # [B*k]: row b, k times
    coords = torch.stack([indices.reshape(-1), sample])
    sparse = torch.sparse_coo_tensor(coords, weights.reshape(-1).to(rows.dtype), (n, b),
                                     check_invariants=False)
    return torch.sparse.mm(sparse, rows)


def gather_rows(indices: Tensor, weights: Tensor, table: Tensor) -> Tensor:
    """out[b] = sum_j weights[b, j] * table[indices[b, j]], shape [B, d]."""
    return F.embedding_bag(indices, table, per_sample_weights=weights.to(table.dtype), mode="sum")


def row_dots(indices: Tensor, table: Tensor, rows: Tensor) -> Tensor:
    """out[b, j] = <table[indices[b, j]], rows[b]>, shape [B, k], in chunks of bounded memory."""
    out = rows.new_empty(indices.shape)
    chunk = max(1, (1 << 24) // max(1, indices.shape[1] * table.shape[1]))  # ~64 MB of gathers
    for start in range(0, indices.shape[0], chunk):
        idx = indices[start:start + chunk]
        picked = table[idx]  # [b, k, d]
        out[start:start + chunk] = torch.bmm(picked, rows[start:start + chunk, :, None])[..., 0]
    return out


class _SparseDecode(torch.autograd.Function):
    @staticmethod
    def forward(ctx, values: Tensor, indices: Tensor, W_dec: Tensor) -> Tensor:
        ctx.save_for_backward(values, indices, W_dec)
        return gather_rows(indices, values, W_dec)

    @staticmethod
    def backward(ctx, grad: Tensor):
        values, indices, W_dec = ctx.saved_tensors
        grad = grad.contiguous()
        g_values = row_dots(indices, W_dec, grad) if ctx.needs_input_grad[0] else None
        g_W = scatter_rows(indices, values, grad, W_dec.shape[0]) if ctx.needs_input_grad[2] \
            else None
        return g_values, None, g_W


def sparse_decode(values: Tensor, indices: Tensor, W_dec: Tensor) -> Tensor:
    """sum_j values[b, j] * W_dec[indices[b, j]] as [B, d_out], with an O(B k d) backward."""
    return _SparseDecode.apply(values, indices, W_dec)


class _TopKEncode(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, W_enc: Tensor, b_enc: Tensor, k: int):
        pre = torch.addmm(b_enc, x, W_enc.t())  # [B, n_latents]: the one dense product
        values, indices = pre.topk(k, dim=-1, sorted=False)
        values = values.relu_()
        ctx.save_for_backward(x, W_enc, values, indices)
        ctx.mark_non_differentiable(indices)
        return values, indices

    @staticmethod
    def backward(ctx, grad_values: Tensor, _grad_indices):
        x, W_enc, values, indices = ctx.saved_tensors
        g = grad_values * (values > 0)  # ReLU's gradient on the selected latents
        g_x = gather_rows(indices, g, W_enc) if ctx.needs_input_grad[0] else None
        g_W = scatter_rows(indices, g, x.contiguous(), W_enc.shape[0]) \
            if ctx.needs_input_grad[1] else None
        g_b = None
        if ctx.needs_input_grad[2]:
            g_b = g.new_zeros(W_enc.shape[0]).index_add_(0, indices.reshape(-1), g.reshape(-1))
        return g_x, g_W, g_b, None


def topk_encode(x: Tensor, W_enc: Tensor, b_enc: Tensor, k: int) -> SparseCodes:
    """ReLU(TopK(x W_enc^T + b_enc)) as sparse codes; the backward touches only the k active
    latents of each row (no dense [B, n_latents] gradient)."""
    values, indices = _TopKEncode.apply(x, W_enc, b_enc, k)
    return SparseCodes(values, indices)
