"""Sparse TopK encode and decode whose backward passes touch only the k active latents.

A dense TopK SAE step costs about six [B, n_latents] x [n_latents, d] products (forward and
backward of encoder and decoder). Only the forward encoder product is unavoidable: with k active
latents per row, everything else is O(B k d). These autograd functions do exactly that:

- encode, forward: the dense product (`linear`, oneDNN's float32 kernel on the CPU), then top k,
  a chunk of rows at a time (`_top_pre_activations`);
- decode, forward, and encode, gradient of the input: gather the k rows of each input
  (`gather_rows`, one embedding_bag: a weighted gather-and-sum of table rows);
- decode and encode, weight gradients: the same gather over the transposed pattern, with the
  B*k entries sorted by latent so that each latent is one bag (`scatter_rows`);
- decode, gradient of the codes: one dot product per active latent (`row_dots`, embedding_bag's
  per-sample-weight gradient).

Nothing of size [B, n_latents] is made in the backward, and no sparse tensor either (PyTorch's
sparse-dense product on the CPU is about 3x slower than the sorted gather, and the native
embedding_bag weight gradient about 25x).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from saelab.ops import triton_sparse as _triton


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


def _find_onednn_linear():
    try:
        return torch.ops.mkldnn._linear_pointwise if torch.backends.mkldnn.is_available() else None
    except (AttributeError, RuntimeError):
        return None


_onednn_linear = _find_onednn_linear()


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """x weight^T + bias, shape [B, n]: the encoder's dense product.

    For float32 on the CPU, from 16 rows up, this calls oneDNN's matrix product rather than the
    BLAS behind torch.addmm: the same float32 arithmetic, twice as fast on an AMD EPYC (where the
    bundled MKL runs at AVX2 speed, oneDNN at AVX-512 speed). That kernel has no autograd formula,
    so it is used only where no gradient is recorded (inside an autograd Function, under no_grad,
    or for inputs that need none); everywhere else, and under torch.compile, this is torch.addmm.
    """
    global _onednn_linear
    if (x.device.type == "cpu" and torch.is_autocast_enabled("cpu")
            and torch.get_autocast_dtype("cpu") == torch.bfloat16 and x.dtype == torch.float32):
        # bf16 autocast on the CPU: the product in bfloat16 (oneDNN's AVX-512 BF16 kernel runs
        # it about 2x faster than float32), as torch.addmm would under autocast
        x, weight = x.bfloat16(), weight.bfloat16()
        bias = bias.bfloat16() if bias is not None else None
    if (_onednn_linear is not None and x.dim() == 2 and x.shape[0] >= 16
            and not torch.compiler.is_compiling()  # inductor cannot lower the oneDNN op
            and x.device.type == "cpu"
            and all(t is None or t.dtype == x.dtype for t in (weight, bias))
            and x.dtype in (torch.float32, torch.bfloat16)
            and not (torch.is_grad_enabled()
                     and any(t is not None and t.requires_grad for t in (x, weight, bias)))):
        try:
            return _onednn_linear(x, weight.contiguous(), bias, "none", [], "")
        except RuntimeError:  # an unusual build or layout: use the BLAS from now on
            _onednn_linear = None
    return torch.addmm(bias, x, weight.t()) if bias is not None else x @ weight.t()


def gather_rows(indices: Tensor, weights: Tensor, table: Tensor) -> Tensor:
    """out[b] = sum_j weights[b, j] * table[indices[b, j]], shape [B, d]."""
    if _triton.available(table):
        return _triton.gather_rows(indices, weights, table)
    return F.embedding_bag(indices, table.contiguous(), per_sample_weights=weights.to(table.dtype),
                           mode="sum")


def scatter_rows(indices: Tensor, weights: Tensor, rows: Tensor, n: int) -> Tensor:
    """out[n, d] with out[indices[b, j]] += weights[b, j] * rows[b]: the transpose of
    `gather_rows`.

    Sorting the B*k entries by latent turns the scatter into a gather: latent i's bag holds the
    batch rows that selected it, and embedding_bag sums each bag (O(B k d + B k log(B k)));
    latents that no row selected get zeros. The stable sort keeps each sum in batch order, so the
    result is deterministic. On a GPU with triton this is one Triton kernel (`triton_sparse`).
    """
    if _triton.available(rows):
        return _triton.scatter_rows(indices, weights, rows, n)
    k = indices.shape[1]
    flat = indices.reshape(-1)  # [B*k], entry e = (row e // k, slot e % k)
    order = _stable_argsort(flat)  # [B*k]: entries grouped by latent
    offsets = flat.new_zeros(n + 1)  # [n + 1]: bag i is order[offsets[i]:offsets[i + 1]]
    torch.cumsum(torch.bincount(flat, minlength=n), 0, out=offsets[1:])
    return F.embedding_bag(torch.div(order, k, rounding_mode="floor"), rows.contiguous(), offsets,
                           mode="sum", per_sample_weights=weights.reshape(-1)[order].to(rows.dtype),
                           include_last_offset=True)


def _stable_argsort(keys: Tensor) -> Tensor:
    """Stable argsort of a 1-D integer tensor.

    On the CPU this is numpy's single-threaded sort: torch's parallel integer radix sort
    synchronises its threads once per pass, and takes 100x longer (0.2 s for 10^5 keys instead
    of 2 ms) whenever another process keeps one of the cores busy.
    """
    if keys.device.type == "cpu":
        return torch.from_numpy(np.argsort(keys.numpy(), kind="stable"))
    return torch.argsort(keys, stable=True)


_HAS_DOTS_KERNEL = hasattr(torch.ops.aten, "_embedding_bag_per_sample_weights_backward")


def row_dots(indices: Tensor, table: Tensor, rows: Tensor) -> Tensor:
    """out[b, j] = <table[indices[b, j]], rows[b]>, shape [B, k].

    This is the gradient of `gather_rows` with respect to its weights, which PyTorch has as one
    kernel (dot products straight from the table, nothing gathered into memory); where that
    private kernel is missing, `_row_dots_chunked` does the same with public operations. On a
    GPU with triton this is one Triton kernel (`triton_sparse`).
    """
    if _triton.available(table):
        return _triton.row_dots(indices, table, rows)
    if not _HAS_DOTS_KERNEL:
        return _row_dots_chunked(indices, table, rows)
    b, k = indices.shape
    bag_starts = torch.arange(0, b * k, k, device=indices.device)  # [B]: offsets of the bags
    bag_of_entry = torch.arange(b, device=indices.device).repeat_interleave(k)  # [B*k]
    out = torch.ops.aten._embedding_bag_per_sample_weights_backward(
        rows.contiguous(), table.contiguous(), indices.reshape(-1), bag_starts, bag_of_entry,
        0)  # mode 0: sum
    return out.view(b, k)


def _row_dots_chunked(indices: Tensor, table: Tensor, rows: Tensor) -> Tensor:
    """`row_dots` with public operations: gather a few rows' k table rows at a time (a chunk
    that stays in a 2 MB cache) and multiply them by the row."""
    b, k = indices.shape
    d = table.shape[1]
    out = rows.new_empty(b, k)
    chunk = max(1, (1 << 19) // max(1, k * d))  # rows per chunk: ~512K gathered elements
    for start in range(0, b, chunk):
        stop = min(b, start + chunk)
        picked = F.embedding(indices[start:stop], table)  # [c, k, d]
        torch.bmm(picked, rows[start:stop, :, None], out=out[start:stop, :, None])  # [c, k, 1]
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
    return _decode(values, indices, W_dec)


_CHUNK_ROWS = 256
_CHUNK_MAX_BYTES = 16 << 20


def _top_pre_activations(x: Tensor, W_enc: Tensor, b_enc: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The k largest entries of each row of x W_enc^T + b_enc: values and indices, [B, k].

    The [B, n_latents] product is made 256 rows at a time where such a chunk is at most 16 MB:
    the top k are then picked from the cache instead of from memory, the allocator reuses one
    block instead of mapping fresh pages for 256 MB, and nothing of size [B, n_latents] is
    held. For 4,096 x 16,384 this takes 15-20% off the encoder's forward pass (on 2 cores). On
    a GPU the product is made whole: one large matrix product keeps it busy.
    """
    b, n = x.shape[0], W_enc.shape[0]
    if (x.device.type != "cpu" or b <= _CHUNK_ROWS
            or _CHUNK_ROWS * n * x.element_size() > _CHUNK_MAX_BYTES):
        return linear(x, W_enc, b_enc).topk(k, dim=-1, sorted=False)
    values = indices = None
    for start in range(0, b, _CHUNK_ROWS):
        rows = slice(start, start + _CHUNK_ROWS)
        pre = linear(x[rows], W_enc, b_enc)  # [<= 256, n_latents] (bf16 under autocast)
        if values is None:
            values = pre.new_empty(b, k)
            indices = torch.empty(b, k, dtype=torch.int64, device=x.device)
        torch.topk(pre, k, dim=-1, sorted=False, out=(values[rows], indices[rows]))
    return values, indices


class _TopKEncode(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, W_enc: Tensor, b_enc: Tensor, k: int):
        values, indices = _top_pre_activations(x, W_enc, b_enc, k)
        values = values.relu_()
        ctx.save_for_backward(x, W_enc, values, indices)
        ctx.mark_non_differentiable(indices)
        return values, indices

    @staticmethod
    def backward(ctx, grad_values: Tensor, _grad_indices):
        return (*selected_encoder_grads(ctx, grad_values), None)


def selected_encoder_grads(ctx, grad_values: Tensor) -> tuple:
    """Gradients (x, W_enc, b_enc) of codes ReLU(x W_enc[i]^T + b_enc[i]) at selected latents i,
    from an autograd context that saved (x, W_enc, values, indices) and whose first three inputs
    are x, W_enc, b_enc: touches only the selected latents."""
    x, W_enc, values, indices = ctx.saved_tensors
    # ReLU's gradient on the selected latents, in the inputs' precision (bf16 values under
    # autocast: the weight gradients are summed in float32)
    g = grad_values.to(torch.promote_types(grad_values.dtype, x.dtype)) * (values > 0)
    g_x = gather_rows(indices, g, W_enc) if ctx.needs_input_grad[0] else None
    g_W = scatter_rows(indices, g, x, W_enc.shape[0]) if ctx.needs_input_grad[1] else None
    g_b = None
    if ctx.needs_input_grad[2]:
        g_b = g.new_zeros(W_enc.shape[0]).index_add_(0, indices.reshape(-1), g.reshape(-1))
    return g_x, g_W, g_b


def topk_encode(x: Tensor, W_enc: Tensor, b_enc: Tensor, k: int) -> SparseCodes:
    """ReLU(TopK(x W_enc^T + b_enc)) as sparse codes; the backward touches only the k active
    latents of each row (no dense [B, n_latents] gradient)."""
    values, indices = _encode(x, W_enc, b_enc, k)
    return SparseCodes(values, indices)


_decode, _encode = _SparseDecode.apply, _TopKEncode.apply


def keep_eager_under_compile() -> None:
    """Make torch.compile run the sparse decode and TopK encode eagerly, breaking the graph
    around them: their kernels are already the sparse ones, and traced they lose the oneDNN
    product (measured 0.6x on the reference TopK step). The trainer calls this for
    TrainConfig(compile=True); not done at import, because it imports torch._dynamo (and with it
    triton, where installed)."""
    global _decode, _encode
    _decode = torch.compiler.disable(_SparseDecode.apply)
    _encode = torch.compiler.disable(_TopKEncode.apply)
