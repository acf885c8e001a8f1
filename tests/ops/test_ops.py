"""The sparse TopK ops (saelab.ops.sparse) against dense float64 references.

Each reference is the textbook dense computation: pre-activations [B, n], a dense code matrix
with the k selected latents, a dense decoder product, and autograd through all of it.
"""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from saelab.ops import sparse as S
from saelab.ops.sparse import SparseCodes, sparse_decode, to_dense, topk_encode, topk_relu

F64 = torch.float64


def _problem(b=6, d=5, n=12, seed=0, dtype=F64):
    """Random inputs, encoder and decoder of a small SAE; all leaves require grad."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, d, generator=g, dtype=dtype)
    W_enc = torch.randn(n, d, generator=g, dtype=dtype)
    b_enc = torch.randn(n, generator=g, dtype=dtype)
    W_dec = torch.randn(n, d, generator=g, dtype=dtype)
    for t in (x, W_enc, b_enc, W_dec):
        t.requires_grad_(True)
    return x, W_enc, b_enc, W_dec


def _dense_codes(x, W_enc, b_enc, k):
    """Reference: ReLU of the k largest pre-activations, zero elsewhere, as a dense [B, n]."""
    pre = x @ W_enc.t() + b_enc
    keep = torch.zeros_like(pre, dtype=torch.bool).scatter_(1, pre.topk(k, dim=-1).indices, True)
    return torch.where(keep, pre.relu(), torch.zeros_like(pre))


def _grads(out, leaves, probe):
    """Gradients of <out, probe> with respect to `leaves` (None where a leaf gets none)."""
    return torch.autograd.grad((out * probe).sum(), leaves, allow_unused=True)


def _sae_forward(x, W_enc, b_enc, W_dec, k):
    codes = topk_encode(x, W_enc, b_enc, k)
    return codes, sparse_decode(codes.values, codes.indices, W_dec)


def _assert_sae_matches_dense(x, W_enc, b_enc, W_dec, k, seed=1):
    """Forward codes, reconstruction and all four gradients equal the dense reference."""
    codes, x_hat = _sae_forward(x, W_enc, b_enc, W_dec, k)
    dense = _dense_codes(x, W_enc, b_enc, k)
    ref_hat = dense @ W_dec
    torch.testing.assert_close(to_dense(codes, W_enc.shape[0]), dense)
    torch.testing.assert_close(x_hat, ref_hat)
    probe = torch.randn(x_hat.shape, generator=torch.Generator().manual_seed(seed), dtype=F64)
    leaves = (x, W_enc, b_enc, W_dec)
    for got, want, name in zip(_grads(x_hat, leaves, probe), _grads(ref_hat, leaves, probe),
                               ("x", "W_enc", "b_enc", "W_dec")):
        torch.testing.assert_close(got, want, msg=lambda m, name=name: f"grad {name}: {m}")


# --- forward ---------------------------------------------------------------------------------

def test_topk_encode_selects_the_k_largest_and_applies_relu():
    x, W_enc, b_enc, _ = _problem()
    codes = topk_encode(x, W_enc, b_enc, 4)
    assert codes.values.shape == codes.indices.shape == (6, 4)
    assert codes.indices.dtype == torch.int64
    torch.testing.assert_close(to_dense(codes, 12), _dense_codes(x, W_enc, b_enc, 4))
    assert (codes.values >= 0).all()


@pytest.mark.parametrize("dtype", [F64, torch.float32])
def test_topk_encode_in_row_chunks_equals_whole_batch(dtype):
    # 600 rows: the product is made in chunks of 256 rows (the last one partial).
    assert 600 > S._CHUNK_ROWS
    x, W_enc, b_enc, W_dec = _problem(b=600, d=8, n=64, seed=2, dtype=dtype)
    codes = topk_encode(x, W_enc, b_enc, 5)
    with torch.no_grad():
        whole = topk_relu(x.double() @ W_enc.double().t() + b_enc.double(), 5)
    assert torch.equal(codes.indices.sort(-1).values, whole.indices.sort(-1).values)
    torch.testing.assert_close(to_dense(codes, 64).double(), to_dense(whole, 64), rtol=1e-5,
                               atol=1e-5)
    if dtype == F64:
        _assert_sae_matches_dense(x, W_enc, b_enc, W_dec, k=5)


def test_topk_relu_matches_topk_encode():
    x, W_enc, b_enc, _ = _problem()
    with torch.no_grad():
        a = topk_relu(x @ W_enc.t() + b_enc, 3)
        b = topk_encode(x, W_enc, b_enc, 3)
    torch.testing.assert_close(to_dense(a, 12), to_dense(b, 12))


def test_sparse_decode_equals_dense_decoder_product():
    _, _, _, W_dec = _problem()
    g = torch.Generator().manual_seed(3)
    values = torch.randn(6, 4, generator=g, dtype=F64)
    indices = torch.randperm(12, generator=g)[:4].repeat(6, 1)
    dense = to_dense(SparseCodes(values, indices), 12)
    torch.testing.assert_close(sparse_decode(values, indices, W_dec), dense @ W_dec)


# --- gradients against the dense reference ---------------------------------------------------

@pytest.mark.parametrize("k", [1, 3, 12])
def test_sae_gradients_equal_dense_reference(k):
    _assert_sae_matches_dense(*_problem(), k=k)


def test_k_equal_to_n_latents_is_a_dense_relu_sae():
    x, W_enc, b_enc, W_dec = _problem(n=7)
    _, x_hat = _sae_forward(x, W_enc, b_enc, W_dec, 7)
    torch.testing.assert_close(x_hat, (x @ W_enc.t() + b_enc).relu() @ W_dec)
    _assert_sae_matches_dense(x, W_enc, b_enc, W_dec, k=7)


def test_batch_of_one():
    _assert_sae_matches_dense(*_problem(b=1), k=3)


def test_latents_selected_by_many_rows_accumulate_gradient():
    # A large shared bias makes every row pick the same latents: each latent's gradient is a sum
    # over the whole batch (the scatter's bags are long, the others empty).
    x, W_enc, b_enc, W_dec = _problem(b=9)
    with torch.no_grad():
        b_enc[[2, 5]] += 100.0
    codes, _ = _sae_forward(x, W_enc, b_enc, W_dec, 2)
    assert set(codes.indices.unique().tolist()) == {2, 5}
    _assert_sae_matches_dense(x, W_enc, b_enc, W_dec, k=2)


def test_relu_clipped_latents_give_zero_code_and_zero_gradient():
    # Strongly negative biases: every pre-activation is negative except latent 0's, so with k = 3
    # two selected latents per row are clipped to zero by the ReLU.
    x, W_enc, b_enc, W_dec = _problem(n=8)
    with torch.no_grad():
        b_enc.fill_(-100.0)
        b_enc[0] = 100.0
    codes, x_hat = _sae_forward(x, W_enc, b_enc, W_dec, 3)
    clipped = codes.indices != 0
    assert clipped.sum() == 2 * x.shape[0]
    assert (codes.values[clipped] == 0).all() and (codes.values[~clipped] > 0).all()

    probe = torch.randn_like(x_hat)
    _, g_W_enc, g_b_enc, g_W_dec = _grads(x_hat, (x, W_enc, b_enc, W_dec), probe)
    # Clipped latents pass no gradient to the encoder, and contribute nothing to the decoder.
    assert (g_W_enc[1:] == 0).all() and (g_b_enc[1:] == 0).all()
    assert (g_W_dec[1:] == 0).all()
    assert (g_W_enc[0] != 0).any() and g_b_enc[0] != 0
    _assert_sae_matches_dense(x, W_enc, b_enc, W_dec, k=3)


def test_gradient_of_clipped_code_values_is_zero_through_encoder():
    # The gradient reaching the encoder through a clipped value is zero even when the incoming
    # gradient on that value is not.
    x, W_enc, b_enc, _ = _problem(n=8)
    with torch.no_grad():
        b_enc.fill_(-100.0)
    codes = topk_encode(x, W_enc, b_enc, 2)
    assert (codes.values == 0).all()
    g = torch.autograd.grad(codes.values.sum(), (x, W_enc, b_enc))
    assert all((t == 0).all() for t in g)


def test_non_contiguous_inputs():
    x, W_enc, b_enc, W_dec = _problem()
    # Same numbers, strided layouts: a transposed x, a column slice of a wider encoder, a
    # transposed decoder and every other element of a bias.
    x_nc = x.detach().t().contiguous().t().requires_grad_(True)
    W_enc_nc = torch.cat([W_enc.detach(), W_enc.detach()], 1)[:, :5].requires_grad_(True)
    W_dec_nc = W_dec.detach().t().contiguous().t().requires_grad_(True)
    b_nc = torch.stack([b_enc.detach(), b_enc.detach()], 1)[:, 0].requires_grad_(True)
    assert not any(t.is_contiguous() for t in (x_nc, W_enc_nc, W_dec_nc, b_nc))
    _assert_sae_matches_dense(x_nc, W_enc_nc, b_nc, W_dec_nc, k=3)


def test_non_contiguous_values_and_upstream_gradient():
    _, _, _, W_dec = _problem()
    g = torch.Generator().manual_seed(4)
    values = torch.randn(4, 6, generator=g, dtype=F64).t().requires_grad_(True)  # [6, 4] strided
    indices = torch.stack([torch.randperm(12, generator=g)[:4] for _ in range(6)])
    out = sparse_decode(values, indices, W_dec)
    probe = torch.randn(5, 6, generator=g, dtype=F64).t()  # strided upstream gradient
    ref = to_dense(SparseCodes(values, indices), 12) @ W_dec
    for got, want in zip(_grads(out, (values, W_dec), probe), _grads(ref, (values, W_dec), probe)):
        torch.testing.assert_close(got, want)


def test_float32_matches_float64_reference():
    # A larger float32 problem (the training dtype) against the float64 reference.
    x, W_enc, b_enc, W_dec = _problem(b=64, d=32, n=256, seed=5)
    leaves32 = [t.detach().float().requires_grad_(True) for t in (x, W_enc, b_enc, W_dec)]
    _, x_hat = _sae_forward(*leaves32, k=8)
    dense = _dense_codes(x, W_enc, b_enc, 8)
    ref_hat = dense @ W_dec
    torch.testing.assert_close(x_hat.double(), ref_hat, rtol=1e-4, atol=1e-4)
    probe = torch.randn(ref_hat.shape, dtype=F64)
    got = _grads(x_hat, leaves32, probe.float())
    want = _grads(ref_hat, (x, W_enc, b_enc, W_dec), probe)
    for a, b in zip(got, want):
        torch.testing.assert_close(a.double(), b, rtol=1e-4, atol=1e-4)


# --- gradcheck on tiny sizes -----------------------------------------------------------------

def test_gradcheck_topk_encode():
    x, W_enc, b_enc, _ = _problem(b=3, d=4, n=6, seed=7)
    assert torch.autograd.gradcheck(lambda *a: topk_encode(*a, 3).values, (x, W_enc, b_enc))


def test_gradcheck_sparse_decode():
    _, _, _, W_dec = _problem(n=6, seed=8)
    values = torch.randn(3, 2, dtype=F64, requires_grad=True)
    indices = torch.tensor([[0, 5], [5, 2], [1, 0]])
    assert torch.autograd.gradcheck(lambda v, w: sparse_decode(v, indices, w), (values, W_dec))


def test_gradcheck_encode_then_decode():
    x, W_enc, b_enc, W_dec = _problem(b=2, d=3, n=5, seed=9)

    def sae(*leaves):
        return _sae_forward(*leaves, k=2)[1]

    assert torch.autograd.gradcheck(sae, (x, W_enc, b_enc, W_dec))


# --- the building blocks ---------------------------------------------------------------------

def _pattern(b=7, k=3, n=10, d=4, seed=11):
    g = torch.Generator().manual_seed(seed)
    indices = torch.stack([torch.randperm(n, generator=g)[:k] for _ in range(b)])
    weights = torch.randn(b, k, generator=g, dtype=F64)
    return indices, weights, g


def test_scatter_rows_is_the_transpose_of_gather_rows():
    indices, weights, g = _pattern(b=3, k=2)  # 6 entries: some of the 10 latents are unused
    rows = torch.randn(3, 4, generator=g, dtype=F64)
    dense = to_dense(SparseCodes(weights, indices), 10)  # [B, n]
    out = S.scatter_rows(indices, weights, rows, 10)
    torch.testing.assert_close(out, dense.t() @ rows)
    unused = torch.ones(10, dtype=torch.bool)
    unused[indices.unique()] = False
    assert unused.any() and (out[unused] == 0).all()


def test_scatter_rows_is_deterministic():
    indices, weights, g = _pattern(b=300, k=5, n=20, d=16)
    rows = torch.randn(300, 16, generator=g, dtype=torch.float32)
    first = S.scatter_rows(indices, weights.float(), rows, 20)
    assert torch.equal(first, S.scatter_rows(indices, weights.float(), rows, 20))


def test_gather_rows_equals_dense_product():
    indices, weights, g = _pattern()
    table = torch.randn(10, 4, generator=g, dtype=F64)
    dense = to_dense(SparseCodes(weights, indices), 10)
    torch.testing.assert_close(S.gather_rows(indices, weights, table), dense @ table)


@pytest.mark.parametrize("impl", [S.row_dots, S._row_dots_chunked])
def test_row_dots_equals_gathered_dot_products(impl):
    indices, _, g = _pattern(b=70, k=3)
    table = torch.randn(10, 4, generator=g, dtype=F64)
    rows = torch.randn(70, 4, generator=g, dtype=F64)
    want = (table[indices] * rows[:, None, :]).sum(-1)
    torch.testing.assert_close(impl(indices, table, rows), want)
    torch.testing.assert_close(impl(indices, table.t().contiguous().t(), rows.t().contiguous().t()),
                               want)


@pytest.mark.parametrize("b", [1, 64])  # 64 rows: oneDNN's product where available
@pytest.mark.parametrize("with_bias", [True, False])
def test_linear_equals_float64_product(b, with_bias):
    x, W, bias, _ = _problem(b=b, d=24, n=40, seed=12)
    want = x @ W.t() + (bias if with_bias else 0)
    args32 = [t.detach().float() for t in (x, W, bias)]
    got = S.linear(args32[0], args32[1], args32[2] if with_bias else None)
    torch.testing.assert_close(got.double(), want.detach(), rtol=1e-5, atol=1e-5)
    strided = S.linear(args32[0].t().contiguous().t(), args32[1].t().contiguous().t(),
                       args32[2] if with_bias else None)
    torch.testing.assert_close(strided, got)


def test_linear_records_gradients_where_needed():
    x, W, bias, _ = _problem(b=64, d=24, n=40, seed=13, dtype=torch.float32)
    out = S.linear(x, W, bias)
    assert out.grad_fn is not None
    probe = torch.randn(out.shape)
    got = _grads(out, (x, W, bias), probe)
    want = _grads(x @ W.t() + bias, (x, W, bias), probe)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)
    with torch.no_grad():
        torch.testing.assert_close(S.linear(x, W, bias), out.detach())


# --- cost ------------------------------------------------------------------------------------

class _LargestOutput(TorchDispatchMode):
    """Records the largest number of elements of any tensor an operation returns."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


def test_backward_makes_nothing_of_size_batch_by_latents():
    b, d, n, k = 64, 8, 4096, 4
    x, W_enc, b_enc, W_dec = _problem(b=b, d=d, n=n, dtype=torch.float32)
    _, x_hat = _sae_forward(x, W_enc, b_enc, W_dec, k)
    with _LargestOutput() as mode:
        x_hat.square().sum().backward()
    assert W_dec.grad is not None and W_enc.grad is not None
    assert mode.largest <= n * d < b * n  # the weight gradients are the largest things made
