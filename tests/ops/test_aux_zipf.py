"""aux_zipf_loss: an AuxK that also trains under-used latents, pulling usage towards Zipf."""

from __future__ import annotations

import pytest
import torch

import saelab
from saelab.data.synthetic import planted
from saelab.ops.auxk import auxk_loss
from saelab.ops.zipf import aux_zipf_loss, zipf_deficit, zipf_distance, zipf_targets


def test_zipf_targets_redistribute_the_same_usage_in_zipf_shape():
    usage = torch.tensor([0.0, 0.5, 0.1, 0.2, 0.05, 0.15])
    t = zipf_targets(usage)
    assert float(t.sum()) == pytest.approx(1.0)
    order = torch.argsort(usage, descending=True)  # ranks keep the current order
    ranked = t[order]
    assert torch.allclose(ranked / ranked[0], 1 / torch.arange(1.0, 7.0))


def test_zipf_deficit_is_one_for_dead_latents_and_zero_at_target():
    usage = torch.tensor([0.0, 0.5, 0.1, 0.2, 0.05, 0.15])
    d = zipf_deficit(usage)
    assert d[0] == 1.0 and ((d >= 0) & (d <= 1)).all()
    assert d[1] == 0.0  # the most used latent: 0.5 is above its target 0.408


def test_aux_zipf_loss_with_dead_or_alive_deficits_is_auxk():
    g = torch.Generator().manual_seed(0)
    x, residual = torch.randn(32, 16, generator=g), torch.randn(32, 16, generator=g)
    W_enc, W_dec = torch.randn(64, 16, generator=g), torch.randn(64, 16, generator=g)
    b_enc = torch.randn(64, generator=g) * 0.1
    dead = torch.rand(64, generator=g) < 0.3
    ours = aux_zipf_loss(x, residual, W_enc, b_enc, W_dec, dead.float(), k_aux=5)
    theirs = auxk_loss(x, residual, W_enc, b_enc, W_dec, dead, k_aux=5)
    assert float(ours) == pytest.approx(float(theirs), rel=1e-5)


def test_aux_zipf_loss_moves_feature_usage_towards_zipf():
    """Half the latents start starved (encoder rows shrunk 20x, so they never win the batch's
    budget). Same data, seed and budget; only the auxiliary loss differs. Without it they stay
    dead; with aux_zipf_loss they are trained back into use, the rank-frequency curve gets
    closer to its Zipf law (log scale), and far fewer latents are dead."""
    data = planted(n=8192, d=32, n_atoms=128, mean_active=4, seed=1).x
    results = {}
    for aux in ("none", "zipf"):
        torch.manual_seed(0)
        sae = saelab.create("mutual_choice", d_in=32, n_latents=256, k=4, aux=aux,
                            aux_coeff=0.5)
        with torch.no_grad():
            sae.W_enc[128:] *= 0.05
        sae = saelab.fit(sae, data[:6144], saelab.TrainConfig(steps=800, batch_size=256,
                                                              seed=0, progress=False))
        sae.train()  # the training-time allocation, whose usage the loss steers
        with torch.no_grad():
            codes = torch.cat([sae.encode(c) for c in data[-2048:].split(256)])
        freq = (codes != 0).float().mean(0)
        results[aux] = (zipf_distance(freq, 1 / 2048), float((freq == 0).float().mean()),
                        float(freq[128:].sum() / freq.sum()))
    (dist_none, dead_none, share_none), (dist_zipf, dead_zipf, share_zipf) = (
        results["none"], results["zipf"])
    assert dead_none >= 0.5 and share_none == 0.0, results  # the starved half stays dead
    assert dead_zipf < 0.5 * dead_none, results
    assert share_zipf > 0.1, results  # the revived latents carry real usage
    assert dist_zipf < 0.75 * dist_none, results  # ... and the shape moves towards Zipf


def test_add_auxk_adds_the_term_only_when_on_and_some_latent_is_dead():
    from types import SimpleNamespace

    from saelab.ops.auxk import add_auxk

    g = torch.Generator().manual_seed(0)
    x, target, x_hat = (torch.randn(32, 8, generator=g) for _ in range(3))
    W_enc, W_dec = torch.randn(16, 8, generator=g), torch.randn(16, 8, generator=g)
    b_enc = torch.zeros(16)
    dead = torch.zeros(16, dtype=torch.bool)
    dead[:5] = True
    total = torch.tensor(1.0)
    on, off = SimpleNamespace(auxk_coeff=0.5, auxk_k=3), SimpleNamespace(auxk_coeff=0.0, auxk_k=3)
    for cfg, mask in ((off, dead), (on, None), (on, torch.zeros(16, dtype=torch.bool))):
        terms = {}
        assert add_auxk(terms, total, cfg, mask, x, target, x_hat, W_enc, b_enc, W_dec) is total
        assert terms == {}
    terms = {}
    out = add_auxk(terms, total, on, dead, x, target, x_hat, W_enc, b_enc, W_dec)
    expected = auxk_loss(x, target - x_hat, W_enc, b_enc, W_dec, dead, 3)
    assert torch.equal(terms["auxk"], expected) and torch.equal(out, total + 0.5 * expected)


def test_magnitude_codes_let_latents_with_negative_pre_activations_reconstruct():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 8, generator=g)
    W_enc = torch.randn(4, 8, generator=g)
    b_enc = torch.full((4,), -100.0)  # every pre-activation negative
    dead = torch.ones(4, dtype=torch.bool)
    residual = torch.randn(64, 8, generator=g)
    relu = auxk_loss(x, residual, W_enc, b_enc, W_enc, dead, 2, codes="relu")
    nothing = residual.pow(2).sum(-1).mean() / (residual - residual.mean(0)).pow(2).sum(-1).mean()
    assert relu == pytest.approx(float(nothing))  # ReLU'd codes are all 0: no reconstruction
    for codes in ("signed", "magnitude"):
        assert auxk_loss(x, residual, W_enc, b_enc, W_enc, dead, 2, codes=codes) != relu
