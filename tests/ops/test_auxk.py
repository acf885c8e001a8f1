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


def test_topk_picks_auxk_codes_from_its_own_encoder_product():
    """TopK's loss with dead latents: the AuxK codes picked in the main encoder pass give the
    loss and gradients of picking them in a second pass (`dead_topk`)."""
    from saelab.dictionaries import StepState
    from saelab.ops.auxk import dead_topk
    from saelab.ops.sparse import topk_encode, topk_encode_with_aux
    import saelab

    torch.manual_seed(0)
    sae = saelab.create("topk", d_in=16, n_latents=600, k=4, auxk_k=8)
    x = torch.randn(300, 16)  # more than one 256-row chunk of the encoder
    dead = torch.rand(600) < 0.4
    xc = x - sae.b_dec
    codes, aux = topk_encode_with_aux(xc, sae.W_enc, sae.b_enc, 4, dead, 8)
    want = topk_encode(xc, sae.W_enc, sae.b_enc, 4)
    assert torch.equal(codes.indices.sort(1).values, want.indices.sort(1).values)
    values, indices = dead_topk(xc, sae.W_enc, sae.b_enc, dead.nonzero().squeeze(1), 8)
    assert dead[aux.indices].all()
    assert torch.equal(aux.indices.sort(1).values, indices.sort(1).values)
    torch.testing.assert_close(aux.values.sort(1).values, values.sort(1).values)

    state = StepState(step=0, total_steps=10, dead_mask=dead)
    grads = []
    for fused in (True, False):
        sae.zero_grad(set_to_none=True)
        if fused:
            out = sae.loss(x, state)
        else:
            out = sae.loss_of_codes(xc, x, topk_encode(xc, sae.W_enc, sae.b_enc, 4), state)
        out.total.backward()
        assert "auxk" in out.terms
        grads.append({n: p.grad.clone() for n, p in sae.named_parameters()})
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], rtol=1e-4, atol=1e-6)
