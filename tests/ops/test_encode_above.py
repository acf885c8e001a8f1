"""encode_above: the whole-matrix path (dense batches) and the listed path (sparse batches) give
the same loss and the same gradients, for the variants that use it."""

from __future__ import annotations

import pytest
import torch

import saelab
import saelab.ops.listed as listed
from saelab.dictionaries import StepState


def _loss_and_grads(sae, x, dense_fraction, monkeypatch):
    monkeypatch.setattr(listed, "DENSE_FRACTION", dense_fraction)
    sae.zero_grad(set_to_none=True)
    out = sae.loss(x, StepState(step=50, total_steps=100, dead_mask=None))
    out.total.backward()
    return out, {n: p.grad.clone() for n, p in sae.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("arch,fields", [("jumprelu", {"sparsity": "step"}),
                                          ("jumprelu", {"sparsity": "tanh"}),
                                          ("relu", {}), ("relu", {"l1_form": "decoder_norm"}),
                                          ("gated", {}), ("gated", {"l1_form": "decoder_norm",
                                                                   "aux_decoder": "trained"})])
def test_dense_and_listed_paths_agree(arch, fields, monkeypatch):
    torch.manual_seed(0)
    sae = saelab.create(arch, d_in=24, n_latents=96, **fields)
    x = torch.randn(64, 24)
    dense, g_dense = _loss_and_grads(sae, x, 0.0, monkeypatch)   # always the whole matrix
    sparse, g_sparse = _loss_and_grads(sae, x, 1.0, monkeypatch)  # always lists
    assert 0.05 < sparse.metrics["l0"] / 96 < 0.95  # a batch where the two forms differ
    assert float(dense.total.detach()) == pytest.approx(float(sparse.total.detach()), rel=1e-5)
    assert torch.equal(dense.active, sparse.active)
    assert g_dense.keys() == g_sparse.keys() and "W_enc" in g_dense
    for name in g_dense:
        torch.testing.assert_close(g_dense[name], g_sparse[name], rtol=1e-4, atol=1e-6)


def test_the_path_follows_the_measured_density():
    x, W = torch.randn(32, 8), torch.randn(40, 8)
    b = torch.zeros(40)
    assert listed.encode_above(x, W, b, 0.0, dense_fraction=0.3).dense  # about half above 0
    sparse = listed.encode_above(x, W, b, 2.5, dense_fraction=0.3)  # a few above 2.5
    assert not sparse.dense
    pre = x @ W.t()
    want = sorted((r, int(c)) for r, c in (pre > 2.5).nonzero().tolist())
    got = sorted((r, int(c)) for r in range(32) for c, v in zip(sparse.indices[r], sparse.valid[r])
                 if v)
    assert got == want
