"""AbsTopK SAE: top k by magnitude, signed codes, one atom used in both directions; by default
(the authors' BatchAbsoluteKSAE) the k x B largest |pre| of the whole batch, with no encoder
bias."""

from __future__ import annotations

import pytest
import torch

import saelab
from saelab.dictionaries import StepState
from saelab.errors import ConfigError


def bidirectional(n: int = 4096, d: int = 16, n_axes: int = 4, seed: int = 0):
    """Rows s * c * u_j: one of n_axes unit directions, a random sign s, magnitude c in
    [0.5, 1.5], little noise. Each axis is one bidirectional concept."""
    g = torch.Generator().manual_seed(seed)
    axes = torch.linalg.qr(torch.randn(d, n_axes, generator=g)).Q.T  # [n_axes, d] orthonormal
    which = torch.randint(n_axes, (n,), generator=g)
    sign = torch.randint(2, (n,), generator=g).float() * 2 - 1
    mag = torch.rand(n, generator=g) + 0.5
    x = (sign * mag)[:, None] * axes[which] + 0.01 * torch.randn(n, d, generator=g)
    return x, axes


def test_abstopk_row_selection_keeps_negative_codes_of_largest_magnitude():
    torch.manual_seed(0)
    sae = saelab.create("abstopk", d_in=16, n_latents=64, k=5, selection="row")
    x = torch.randn(100, 16)
    codes, pre = sae.encode(x), sae.pre_activations(x)
    assert ((codes != 0).sum(-1) == 5).all()
    assert (codes < 0).any() and (codes > 0).any()
    kept = codes != 0
    assert torch.equal(codes[kept], pre[kept])  # signed, not rectified
    assert pre.abs()[kept].min() >= pre.abs()[~kept].reshape(100, -1).max(-1).values.min()
    loss = sae.loss(x, StepState())
    assert 0 < loss.metrics["negative_fraction"] < 1


@pytest.mark.parametrize("batch", [1, 7, 200])
def test_abstopk_batch_mode_spends_exactly_k_times_batch_signed_pairs(batch):
    torch.manual_seed(0)
    sae = saelab.create("abstopk", d_in=16, n_latents=64, k=5)
    assert sae.cfg.selection == "batch" and sae.training
    x = torch.randn(batch, 16) * torch.rand(batch, 1) * 3  # rows of different sizes
    codes, pre = sae.encode(x), sae.pre_activations(x)
    kept = codes != 0
    assert int(kept.sum()) == 5 * batch  # exactly k x B pairs over the batch
    assert torch.equal(codes[kept], pre[kept])  # signed, not rectified
    if batch > 1:
        assert (codes < 0).any() and (codes > 0).any()
        assert kept.sum(-1).unique().numel() > 1  # per-row counts vary: not a per-row top k
    # the kept pairs are the k x B largest |pre| of the whole batch
    assert pre.abs()[kept].min() >= pre.abs()[~kept].max()
    loss = sae.loss(x, StepState())
    assert loss.metrics["l0"] == pytest.approx(5.0)
    assert 0 < loss.metrics["negative_fraction"] < 1 or batch == 1


def test_abstopk_default_encoder_has_no_bias_and_no_relu():
    torch.manual_seed(0)
    sae = saelab.create("abstopk", d_in=16, n_latents=64, k=5)
    assert "b_enc" not in sae.state_dict()
    with torch.no_grad():
        sae.b_dec.normal_()
        x = torch.randn(8, 16)
        assert torch.allclose(sae.pre_activations(x), (x - sae.b_dec) @ sae.W_enc.T, atol=1e-6)
    biased = saelab.create("abstopk", d_in=16, n_latents=64, k=5, encoder_bias=True)
    assert "b_enc" in dict(biased.named_parameters())  # saelab's earlier form, as an option


def test_abstopk_batch_mode_infers_per_row_with_the_learned_threshold():
    torch.manual_seed(0)
    x = torch.randn(2048, 16)
    sae = saelab.fit(saelab.create("abstopk", d_in=16, n_latents=64, k=4), x,
                     saelab.TrainConfig(steps=20, batch_size=256, seed=0, progress=False))
    assert not sae.training and float(sae.threshold) > 0
    rows = x[:300]
    codes, pre = sae.encode(rows), sae.pre_activations(rows)
    # a row's code is its own: the same alone as within the batch
    # (up to the float rounding of a different product size)
    assert torch.allclose(sae.encode(rows[:1]), codes[:1], atol=1e-5)
    assert torch.equal(codes != 0, pre.abs() > sae.threshold)
    assert torch.equal(codes[codes != 0], pre[codes != 0])
    assert 2 < (codes != 0).sum(-1).float().mean() < 8  # near k on average


def train(name: str, x, n_latents: int):
    torch.manual_seed(0)
    sae = saelab.create(name, d_in=x.shape[1], n_latents=n_latents, k=1)
    return saelab.fit(sae, x, saelab.TrainConfig(steps=400, batch_size=256, lr=3e-3, seed=0,
                                                 progress=False))


def test_abstopk_encodes_a_bidirectional_direction_with_one_latent_and_both_signs():
    x, axes = bidirectional()
    sae = train("abstopk", x, n_latents=8)  # room for a latent per pole; it needs one per axis
    with torch.no_grad():
        for u in axes:
            plus, minus = sae.encode(u[None]), sae.encode(-u[None])
            i = int(plus.abs().argmax())
            assert int(minus.abs().argmax()) == i  # the same latent for both poles ...
            assert plus[0, i] * minus[0, i] < 0  # ... with opposite signs
            for v in (u, -u):  # and the decoder uses the sign: both poles reconstruct
                assert torch.allclose(sae(v[None]).x_hat[0], v, atol=0.15)
    r = saelab.evaluate(sae, x)
    assert r["reconstruction"]["fvu"] < 0.05, r


def test_topk_needs_a_latent_per_pole_on_the_same_data():
    """The contrast that makes the previous test meaningful: a ReLU TopK SAE trained the same
    way reconstructs the data too, but with a different latent for each pole of an axis."""
    x, axes = bidirectional()
    sae = train("topk", x, n_latents=8)
    with torch.no_grad():
        for u in axes:
            plus, minus = sae.encode(u[None]), sae.encode(-u[None])
            assert (plus >= 0).all() and (minus >= 0).all()
            assert int(plus.argmax()) != int(minus.argmax())


@pytest.mark.parametrize("field,value", [("k", 0), ("k", 65), ("auxk_coeff", -1.0),
                                         ("selection", "rows"), ("encoder_bias", "no"),
                                         ("threshold_decay", 1.0)])
def test_abstopk_bad_fields_are_named(field, value):
    with pytest.raises(ConfigError, match=field):
        saelab.create("abstopk", d_in=16, n_latents=64, **{field: value})
