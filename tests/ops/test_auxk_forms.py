"""AuxK's two forms (dense codes over the dead latents, listed codes) compute the same loss and
gradients as the plain autograd formula, for every code form, with and without encoder bias."""

from __future__ import annotations

import pytest
import torch

from saelab.ops.auxk import auxk_loss


def plain_auxk(xc, residual, W_enc, b_enc, W_dec, dead, k, codes):
    """The formula written out with dense autograd operations, as the reference reads."""
    k = min(k, int(dead.sum()))
    pre = xc @ W_enc[dead].t() + (0 if b_enc is None else b_enc[dead])
    if codes == "magnitude":
        idx = pre.abs().topk(k, dim=-1).indices
        vals = pre.gather(1, idx)
    else:
        vals, idx = pre.topk(k, dim=-1)
        vals = vals.relu() if codes == "relu" else vals
    z = torch.zeros_like(pre).scatter(1, idx, vals)
    e_hat = z @ W_dec[dead]
    scale = (residual - residual.mean(0)).pow(2).sum(-1).mean()
    return (e_hat - residual).pow(2).sum(-1).mean() / scale


def grads(fn, tensors):
    for t in tensors:
        t.grad = None
    loss = fn()
    loss.backward()
    return [loss.item()] + [t.grad.clone() for t in tensors]


@pytest.mark.parametrize("codes", ["relu", "signed", "magnitude"])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("form", ["dense", "listed", "auto"])
@pytest.mark.parametrize("k", [6, 200])
def test_auxk_forms_match_the_plain_formula(codes, bias, form, k):
    """k 200 is more than the dead latents: every one of them is chosen."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 12, generator=g)
    residual = torch.randn(64, 12, generator=g)
    W_enc = torch.randn(96, 12, generator=g).requires_grad_()
    W_dec = torch.randn(96, 12, generator=g).requires_grad_()
    b_dec = torch.zeros(12).requires_grad_()
    b_enc = (torch.randn(96, generator=g) * 0.3).requires_grad_() if bias else None
    dead = torch.rand(96, generator=g) < 0.4
    params = [W_enc, W_dec, b_dec] + ([b_enc] if bias else [])
    want = grads(lambda: plain_auxk(x - b_dec, residual, W_enc, b_enc, W_dec, dead, k, codes),
                 params)
    got = grads(lambda: auxk_loss(x - b_dec, residual, W_enc, b_enc, W_dec, dead, k, codes,
                                  form=form), params)
    assert got[0] == pytest.approx(want[0], rel=1e-5)
    for a, b in zip(got[1:], want[1:]):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-4)
    # only the dead latents' rows receive a gradient
    assert W_enc.grad[~dead].abs().max() == 0 and W_enc.grad[dead].abs().max() > 0


def test_auxk_dense_form_under_bf16_autocast_gives_float32_gradients():
    g = torch.Generator().manual_seed(1)
    x, residual = torch.randn(32, 16, generator=g), torch.randn(32, 16, generator=g)
    W_enc = torch.randn(64, 16, generator=g).requires_grad_()
    W_dec = torch.randn(64, 16, generator=g).requires_grad_()
    dead = torch.arange(64) < 20
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = auxk_loss(x, residual, W_enc, None, W_dec, dead, 8, form="dense")
    loss.float().backward()
    assert W_enc.grad.dtype == torch.float32 and W_dec.grad.dtype == torch.float32
    bf16 = W_dec.grad.clone()
    ref = grads(lambda: auxk_loss(x, residual, W_enc, None, W_dec, dead, 8, form="listed"),
                [W_dec])
    assert torch.allclose(bf16, ref[1], rtol=0.1, atol=0.05 * float(ref[1].abs().max()))


def test_auxk_unknown_form_is_refused():
    with pytest.raises(ValueError, match="form"):
        auxk_loss(torch.randn(4, 3), torch.randn(4, 3), torch.randn(5, 3), None,
                  torch.randn(5, 3), torch.ones(5, dtype=torch.bool), 2, form="sparse")
