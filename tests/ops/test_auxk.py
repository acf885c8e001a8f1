"""AuxK's sparse implementation (top k among the dead latents only, a backward through the chosen
latents only, W_dec read in place) gives the loss and gradients of the plain dense formula."""

from __future__ import annotations

import pytest
import torch

from saelab.ops.auxk import auxk_loss


def dense_auxk(xc, residual, W_enc, b_enc, W_dec, dead_mask, k_aux, codes):
    """Gao et al.'s AuxK written plainly: dense pre-activations of the dead latents, autograd."""
    dead = dead_mask.nonzero().squeeze(1)
    pre = xc @ W_enc[dead].t() + (0 if b_enc is None else b_enc[dead])
    k = min(k_aux, dead.numel())
    if codes == "magnitude":
        local = pre.abs().topk(k, dim=-1).indices
        values = pre.gather(1, local)
    else:
        values, local = pre.topk(k, dim=-1)
        values = values.relu() if codes == "relu" else values
    codes_dense = torch.zeros_like(pre).scatter(1, local, values)
    e_hat = codes_dense @ W_dec[dead]
    r = residual.detach()
    return (e_hat - r).pow(2).sum(-1).mean() / (r - r.mean(0)).pow(2).sum(-1).mean()


@pytest.mark.parametrize("codes", ["relu", "signed", "magnitude"])
@pytest.mark.parametrize("bias", [True, False])
def test_sparse_auxk_matches_the_dense_formula(codes, bias):
    torch.manual_seed(0)
    B, d, n = 64, 16, 200
    x, residual = torch.randn(B, d), torch.randn(B, d)
    b_dec = torch.randn(d, requires_grad=True)
    W_enc = torch.randn(n, d, requires_grad=True)
    b_enc = torch.randn(n, requires_grad=True) if bias else None
    W_dec = torch.randn(n, d, requires_grad=True)
    dead = torch.rand(n) < 0.3
    params = [t for t in (W_enc, b_enc, W_dec, b_dec) if t is not None]
    results = []
    for fn in (dense_auxk, auxk_loss):
        for t in params:
            t.grad = None
        loss = fn(x - b_dec, residual, W_enc, b_enc, W_dec, dead, 8, codes)
        loss.backward()
        results.append((loss.detach(), [t.grad.clone() for t in params]))
    (want, want_grads), (got, got_grads) = results
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    for g, w in zip(got_grads, want_grads):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-5)
    alive = ~dead
    assert got_grads[0][alive].abs().sum() == 0  # live latents' encoder rows get nothing
    assert got_grads[-2][alive].abs().sum() == 0  # nor their decoder rows


def test_no_dead_latent_gives_zero():
    x = torch.randn(8, 4)
    W = torch.randn(10, 4)
    assert auxk_loss(x, x, W, None, W, torch.zeros(10, dtype=torch.bool), 3) == 0
