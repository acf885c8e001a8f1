"""Triton kernels for the three sparse pieces of a TopK step on a GPU.

`saelab.ops.sparse` builds every sparse forward and backward of a TopK SAE out of three
operations; on CUDA tensors, with triton installed, they run as these kernels instead of
PyTorch's embedding_bag:

- `gather_rows`: out[b] = sum_j w[b, j] * table[idx[b, j]] (decode forward; encoder input grad);
- `row_dots`: out[b, j] = <table[idx[b, j]], rows[b]> (gradient of the code values);
- `scatter_rows`: out[i] = sum over (b, j) with idx[b, j] = i of w[b, j] * rows[b] (weight
  gradients of decoder and encoder).

Each program keeps a float32 accumulator and writes each output element once: no atomics, so
the results are deterministic (scatter_rows sorts the B*k entries by latent first, as the CPU
path does, and each program sums one latent's entries in batch order). Tables may be float32 or
bfloat16; the outputs take the dtype of the table (gather_rows, row_dots) or of the rows
(scatter_rows).

Set SAELAB_TRITON=0 to use the PyTorch path on a GPU too; `available()` says whether these
kernels are used. Under TRITON_INTERPRET=1 the kernels also run on CPU tensors (slowly), which is
how the test suite checks them on a machine without a GPU.
"""

from __future__ import annotations

import functools
import os

import torch
from torch import Tensor

_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"


def available(t: Tensor | None = None) -> bool:
    """True when the Triton kernels serve tensor `t` (or CUDA tensors, if `t` is None): `t` is on
    a CUDA device (any device under the interpreter), SAELAB_TRITON is not 0, and triton
    imports. CPU tensors return False before triton is imported, so CPU work never pays for the
    import."""
    if t is not None and not (t.is_cuda or _INTERPRET):
        return False
    if t is None and not (_INTERPRET or torch.cuda.is_available()):
        return False
    return os.environ.get("SAELAB_TRITON", "1") != "0" and _kernels() is not None


def _block(n: int, cap: int) -> int:
    return max(16, min(cap, 1 << max(0, n - 1).bit_length()))


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


@functools.cache
def _kernels():
    """The compiled-on-demand kernels, or None when triton is not installed (the import happens
    on the first GPU call)."""
    try:
        import triton
        import triton.language as tl
    except ImportError:  # triton is optional: the PyTorch path serves every device
        return None

    @triton.jit
    def _gather_rows_kernel(idx_ptr, w_ptr, table_ptr, out_ptr, K, D, stride_table, stride_out,
                            BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr):
        b = tl.program_id(0).to(tl.int64)
        offs_d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
        d_ok = offs_d < D
        acc = tl.zeros([BLOCK_D], dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            offs_k = k0 + tl.arange(0, BLOCK_K)
            k_ok = offs_k < K
            idx = tl.load(idx_ptr + b * K + offs_k, mask=k_ok, other=0).to(tl.int64)
            w = tl.load(w_ptr + b * K + offs_k, mask=k_ok, other=0.0).to(tl.float32)
            rows = tl.load(table_ptr + idx[:, None] * stride_table + offs_d[None, :],
                           mask=k_ok[:, None] & d_ok[None, :], other=0.0).to(tl.float32)
            acc += tl.sum(rows * w[:, None], axis=0)
        tl.store(out_ptr + b * stride_out + offs_d, acc.to(out_ptr.dtype.element_ty), mask=d_ok)

    @triton.jit
    def _row_dots_kernel(idx_ptr, table_ptr, rows_ptr, out_ptr, K, D, stride_table, stride_rows,
                         BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr):
        b = tl.program_id(0).to(tl.int64)
        offs_k = tl.program_id(1) * BLOCK_K + tl.arange(0, BLOCK_K)
        k_ok = offs_k < K
        idx = tl.load(idx_ptr + b * K + offs_k, mask=k_ok, other=0).to(tl.int64)
        acc = tl.zeros([BLOCK_K], dtype=tl.float32)
        for d0 in range(0, D, BLOCK_D):
            offs_d = d0 + tl.arange(0, BLOCK_D)
            d_ok = offs_d < D
            r = tl.load(rows_ptr + b * stride_rows + offs_d, mask=d_ok,
                        other=0.0).to(tl.float32)
            t = tl.load(table_ptr + idx[:, None] * stride_table + offs_d[None, :],
                        mask=k_ok[:, None] & d_ok[None, :], other=0.0).to(tl.float32)
            acc += tl.sum(t * r[None, :], axis=1)
        tl.store(out_ptr + b * K + offs_k, acc.to(out_ptr.dtype.element_ty), mask=k_ok)

    @triton.jit
    def _scatter_rows_kernel(order_ptr, w_ptr, offsets_ptr, rows_ptr, out_ptr, K, D, stride_rows,
                             stride_out, BLOCK_E: tl.constexpr, BLOCK_D: tl.constexpr):
        i = tl.program_id(0)
        offs_d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
        d_ok = offs_d < D
        start = tl.load(offsets_ptr + i)
        stop = tl.load(offsets_ptr + i + 1)
        acc = tl.zeros([BLOCK_D], dtype=tl.float32)
        for e0 in range(start, stop, BLOCK_E):
            offs_e = e0 + tl.arange(0, BLOCK_E)
            e_ok = offs_e < stop
            entry = tl.load(order_ptr + offs_e, mask=e_ok, other=0).to(tl.int64)
            w = tl.load(w_ptr + entry, mask=e_ok, other=0.0).to(tl.float32)
            src = entry // K  # the batch row of this entry
            r = tl.load(rows_ptr + src[:, None] * stride_rows + offs_d[None, :],
                        mask=e_ok[:, None] & d_ok[None, :], other=0.0).to(tl.float32)
            acc += tl.sum(r * w[:, None], axis=0)
        tl.store(out_ptr + i.to(tl.int64) * stride_out + offs_d,
                 acc.to(out_ptr.dtype.element_ty), mask=d_ok)

    return {"gather": _gather_rows_kernel, "dots": _row_dots_kernel,
            "scatter": _scatter_rows_kernel}


def gather_rows(indices: Tensor, weights: Tensor, table: Tensor) -> Tensor:
    """out[b] = sum_j weights[b, j] * table[indices[b, j]], shape [B, d]."""
    b, k = indices.shape
    d = table.shape[1]
    table = table.contiguous()
    out = table.new_empty(b, d)
    if b == 0:
        return out
    block_d = _block(d, 128)
    grid = (b, _cdiv(d, block_d))
    _kernels()["gather"][grid](indices.contiguous(), weights.contiguous(), table, out, k, d,
                              table.stride(0), out.stride(0), BLOCK_K=_block(k, 32),
                              BLOCK_D=block_d)
    return out


def row_dots(indices: Tensor, table: Tensor, rows: Tensor) -> Tensor:
    """out[b, j] = <table[indices[b, j]], rows[b]>, shape [B, k]."""
    b, k = indices.shape
    d = table.shape[1]
    table, rows = table.contiguous(), rows.contiguous()
    out = rows.new_empty(b, k)
    if b == 0:
        return out
    block_k = _block(k, 32)
    grid = (b, _cdiv(k, block_k))
    _kernels()["dots"][grid](indices.contiguous(), table, rows, out, k, d, table.stride(0),
                           rows.stride(0), BLOCK_K=block_k, BLOCK_D=_block(d, 128))
    return out


def scatter_rows(indices: Tensor, weights: Tensor, rows: Tensor, n: int) -> Tensor:
    """out[n, d] with out[indices[b, j]] += weights[b, j] * rows[b]; latents no row selected
    get zeros."""
    k = indices.shape[1]
    d = rows.shape[1]
    rows = rows.contiguous()
    out = rows.new_empty(n, d)
    flat = indices.reshape(-1)
    order = torch.argsort(flat, stable=True)  # entries grouped by latent, batch order kept
    offsets = flat.new_zeros(n + 1)
    torch.cumsum(torch.bincount(flat, minlength=n), 0, out=offsets[1:])
    block_d = _block(d, 128)
    grid = (n, _cdiv(d, block_d))
    _kernels()["scatter"][grid](order, weights.contiguous().reshape(-1), offsets, rows, out, k, d,
                               rows.stride(0), out.stride(0), BLOCK_E=16, BLOCK_D=block_d)
    return out
