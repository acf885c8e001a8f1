"""Defining behaviour of the foundation variants: TopK (and its AuxK loss) and ReLU/L1."""

from __future__ import annotations

import pytest
import torch

import saelab
from saelab.data.synthetic import planted as planted_set
from saelab.data.synthetic import recovery
from saelab.dictionaries import StepState
from saelab.errors import ConfigError


def test_topk_keeps_exactly_k_latents_per_input():
    sae = saelab.create("topk", d_in=16, n_latents=64, k=5)
    with torch.no_grad():
        sae.b_enc.fill_(10.0)  # every pre-activation positive: exactly k survive
    codes = sae.encode(torch.randn(100, 16))
    assert ((codes != 0).sum(-1) == 5).all()


def test_topk_codes_are_the_largest_pre_activations():
    sae = saelab.create("topk", d_in=16, n_latents=64, k=4)
    with torch.no_grad():
        sae.b_enc.fill_(10.0)  # all pre-activations positive, so ReLU clips none
    x = torch.randn(30, 16)
    pre = sae.pre_activations(x)
    codes = sae.encode(x)
    chosen = (codes != 0)
    expected = torch.zeros_like(chosen).scatter_(1, pre.topk(4, dim=-1).indices, True)
    assert torch.equal(chosen, expected)
    assert torch.allclose(codes[chosen], pre[chosen])


def test_topk_rejects_k_above_n_latents():
    with pytest.raises(ConfigError, match="k"):
        saelab.create("topk", d_in=8, n_latents=16, k=17)


@pytest.mark.parametrize("name,fields", [("topk", {"k": 4}), ("relu", {"auxk_coeff": 1 / 32})])
def test_auxk_sends_gradient_only_to_dead_latents(name, fields):
    torch.manual_seed(0)
    sae = saelab.create(name, d_in=16, n_latents=64, **fields)
    x = torch.randn(256, 16)
    dead = torch.zeros(64, dtype=torch.bool)
    dead[:8] = True
    loss = sae.loss(x, StepState(dead_mask=dead))
    assert "auxk" in loss.terms and loss.terms["auxk"] > 0
    loss.terms["auxk"].backward()
    touched = sae.W_enc.grad.abs().sum(1) > 0
    assert touched[:8].any() and not touched[8:].any()


def test_relu_auxk_reaches_latents_negative_on_every_input():
    # how a ReLU latent dies: a ReLU on the AuxK codes would leave it without gradient
    torch.manual_seed(0)
    sae = saelab.create("relu", d_in=16, n_latents=64, auxk_coeff=1 / 32)
    with torch.no_grad():
        sae.b_enc[:8] = -100.0
    x = torch.randn(256, 16)
    dead = torch.zeros(64, dtype=torch.bool)
    dead[:8] = True
    assert not sae.encode(x)[:, :8].any()
    sae.loss(x, StepState(dead_mask=dead)).terms["auxk"].backward()
    assert (sae.b_enc.grad[:8] != 0).all()


def test_auxk_is_absent_without_dead_latents():
    sae = saelab.create("topk", d_in=16, n_latents=64, k=4)
    loss = sae.loss(torch.randn(32, 16), StepState(dead_mask=torch.zeros(64, dtype=torch.bool)))
    assert "auxk" not in loss.terms


def test_relu_auxk_is_off_by_default():
    dead = torch.ones(64, dtype=torch.bool)
    loss = saelab.create("relu", d_in=16, n_latents=64).loss(torch.randn(32, 16),
                                                              StepState(dead_mask=dead))
    assert "auxk" not in loss.terms


@pytest.mark.parametrize("name", ["topk", "relu"])
def test_folding_the_input_scale_gives_the_same_dictionary_on_raw_inputs(name):
    torch.manual_seed(0)
    sae = saelab.create(name, d_in=16, n_latents=64)
    with torch.no_grad():
        sae.b_enc.normal_()
        sae.b_dec.normal_()
    x, s = torch.randn(20, 16) * 7, 0.13
    scaled = sae(x * s).x_hat / s
    sae.fold_input_scale(s)
    assert torch.allclose(sae(x).x_hat, scaled, atol=1e-4)


def test_relu_l1_penalty_weights_codes_by_decoder_norm():
    torch.manual_seed(0)
    sae = saelab.create("relu", d_in=8, n_latents=32, l1_form="decoder_norm", l1_warmup=0.0)
    x = torch.randn(10, 8)
    loss = sae.loss(x, StepState())
    expected = (sae.encode(x) * sae.W_dec.norm(dim=1)).sum(-1).mean()
    assert torch.allclose(loss.terms["l1"], expected)
    assert not sae.unit_norm_decoder


def test_relu_plain_form_keeps_unit_norm_decoder_through_training(planted):
    sae = saelab.create("relu", d_in=32, n_latents=64, l1_form="plain")
    sae = saelab.fit(sae, planted.x, saelab.TrainConfig(steps=20, batch_size=256,
                                                        progress=False))
    assert torch.allclose(sae.W_dec.norm(dim=1), torch.ones(64), atol=1e-5)


def test_relu_l1_warms_up_linearly():
    sae = saelab.create("relu", d_in=8, n_latents=16, l1_coeff=0.5, l1_warmup=0.1)
    x = torch.randn(4, 8)
    w = [sae.loss(x, StepState(step=s, total_steps=100)).metrics["l1_weight"]
         for s in (0, 4, 9, 50)]
    assert w[0] < w[1] < w[2] == pytest.approx(0.5) and w[3] == pytest.approx(0.5)


def test_relu_stronger_l1_gives_sparser_codes(planted):
    l0 = []
    for coeff in (0.01, 0.3):
        sae = saelab.create("relu", d_in=32, n_latents=128, l1_coeff=coeff)
        sae = saelab.fit(sae, planted.x, saelab.TrainConfig(steps=150, batch_size=512,
                                                            progress=False))
        l0.append((sae.encode(planted.x[:2000]) > 0).sum(-1).float().mean().item())
    assert l0[1] < l0[0]


def test_relu_rejects_unknown_l1_form_and_negative_coefficient():
    with pytest.raises(ConfigError, match="l1_form"):
        saelab.create("relu", d_in=8, n_latents=16, l1_form="l2")
    with pytest.raises(ConfigError, match="l1_coeff"):
        saelab.create("relu", d_in=8, n_latents=16, l1_coeff=-1.0)


def test_relu_plain_encoder_starts_at_the_scale_that_reconstructs_the_input():
    torch.manual_seed(0)
    sae = saelab.create("relu", d_in=32, n_latents=512, l1_form="plain")
    x = torch.randn(2000, 32)
    ratio = sae(x).x_hat.norm(dim=1).mean() / x.norm(dim=1).mean()
    assert 0.7 < ratio < 1.3  # unit-norm tied rows would give about 512 / 64 = 8


def test_relu_plain_form_recovers_a_planted_dictionary():
    data = planted_set(n=20_000, d=32, n_atoms=128, mean_active=3, seed=0)
    torch.manual_seed(1)
    sae = saelab.create("relu", d_in=32, n_latents=256, l1_form="plain", l1_coeff=0.3)
    sae = saelab.fit(sae, data.x, saelab.TrainConfig(steps=1000, batch_size=512, lr=4e-3,
                                                     seed=1, progress=False))
    _, recovered = recovery(data.atoms, sae.W_dec.detach())
    assert recovered >= 0.85
