"""Gated SAE (Rajamanoharan et al. 2024): the gate decides which latents fire, the magnitude
path (the gate's weights rescaled per latent) how much; the auxiliary loss trains the gate only."""

from __future__ import annotations

import pytest
import torch

import saelab
from saelab.data.synthetic import planted, recovery
from saelab.dictionaries import StepState
from saelab.dictionaries._base import fvu
from saelab.errors import ConfigError


def _gated(**kw):
    torch.manual_seed(0)
    sae = saelab.create("gated", d_in=16, n_latents=64, **kw)
    with torch.no_grad():
        for name in ("b_gate", "r_mag", "b_mag", "b_dec"):
            getattr(sae, name).normal_(0, 0.3)
    return sae


def test_gate_decides_which_latents_fire_and_magnitude_path_their_size():
    sae = _gated()
    with torch.no_grad():
        sae.b_mag.fill_(5.0)  # magnitude path positive everywhere: only the gate can close
    x = torch.randn(200, 16)
    pre = sae.pre_activations(x)
    codes = sae.encode(x)
    assert 0 < (pre.gate > 0).float().mean() < 1
    assert torch.equal(codes != 0, pre.gate > 0)
    assert torch.equal(codes[pre.gate > 0], pre.magnitude[pre.gate > 0])
    # moving the gate bias changes which latents fire, never the size of those that do
    with torch.no_grad():
        sae.b_gate.add_(0.5)
    wider = sae.encode(x)
    both = (codes != 0) & (wider != 0)
    assert (wider != 0).sum() > (codes != 0).sum()
    assert torch.equal(wider[both], codes[both])


def test_codes_are_zero_where_the_gate_is_open_but_the_magnitude_negative():
    sae = _gated()
    with torch.no_grad():
        sae.b_gate.fill_(5.0)  # every gate open
        sae.b_mag.fill_(-0.5)
    x = torch.randn(100, 16)
    pre = sae.pre_activations(x)
    assert torch.equal(sae.encode(x), pre.magnitude.relu())


def test_magnitude_weights_are_the_gate_weights_rescaled_per_latent():
    sae = _gated()
    x = torch.randn(30, 16)
    expected = (x - sae.b_dec) @ (sae.r_mag.exp()[:, None] * sae.W_enc).T + sae.b_mag
    assert torch.allclose(sae.pre_activations(x).magnitude, expected, atol=1e-5)
    assert torch.allclose(sae.W_mag, sae.r_mag.exp()[:, None] * sae.W_enc)
    # weight sharing: no separate magnitude matrix is stored
    assert set(sae.state_dict()) == {"W_enc", "b_gate", "r_mag", "b_mag", "W_dec", "b_dec"}
    assert sae.r_mag.shape == (64,)


def test_auxiliary_loss_trains_the_gate_path_and_not_the_decoder():
    sae = _gated()
    loss = sae.loss(torch.randn(64, 16), StepState())
    loss.terms["aux"].backward()
    assert sae.W_enc.grad.abs().sum() > 0 and sae.b_gate.grad.abs().sum() > 0
    assert sae.W_dec.grad is None or not sae.W_dec.grad.any()
    for name in ("r_mag", "b_mag"):  # nor the magnitude path
        grad = getattr(sae, name).grad
        assert grad is None or not grad.any()


def test_trained_aux_decoder_lets_the_auxiliary_loss_train_the_decoder():
    sae = _gated(aux_decoder="trained")
    loss = sae.loss(torch.randn(64, 16), StepState())
    loss.terms["aux"].backward()
    assert sae.W_dec.grad.abs().sum() > 0 and sae.b_dec.grad.abs().sum() > 0
    assert sae.W_enc.grad.abs().sum() > 0
    for name in ("r_mag", "b_mag"):
        grad = getattr(sae, name).grad
        assert grad is None or not grad.any()
    sae = _gated(aux_decoder="trained", l1_form="decoder_norm", l1_warmup=0.0)
    sae.loss(torch.randn(64, 16), StepState()).terms["l1"].backward()
    assert sae.W_dec.grad.abs().sum() > 0  # the penalty's decoder norms are not frozen either


def test_reconstruction_trains_magnitude_path_and_decoder_but_not_gate_bias():
    sae = _gated()
    loss = sae.loss(torch.randn(64, 16), StepState())
    loss.terms["mse"].backward()
    assert sae.W_dec.grad.abs().sum() > 0 and sae.r_mag.grad.abs().sum() > 0
    assert sae.b_mag.grad.abs().sum() > 0
    assert sae.b_gate.grad is None or not sae.b_gate.grad.any()  # the step passes no gradient


def test_sparsity_penalty_is_the_l1_of_the_open_gate():
    sae = _gated(l1_warmup=0.0)
    x = torch.randn(40, 16)
    loss = sae.loss(x, StepState())
    assert torch.allclose(loss.terms["l1"], sae.pre_activations(x).gate.relu().sum(-1).mean())
    frozen = sae.pre_activations(x).gate.relu() @ sae.W_dec + sae.b_dec
    assert torch.allclose(loss.terms["aux"], (frozen - x).pow(2).sum(-1).mean())
    assert sae.unit_norm_decoder


def test_decoder_norm_form_weights_the_penalty_by_frozen_decoder_norms():
    sae = _gated(l1_form="decoder_norm", l1_warmup=0.0)
    with torch.no_grad():
        sae.W_dec.mul_(torch.rand(64, 1) + 0.5)
    x = torch.randn(40, 16)
    loss = sae.loss(x, StepState())
    gate = sae.pre_activations(x).gate.relu()
    assert torch.allclose(loss.terms["l1"], (gate * sae.W_dec.norm(dim=1)).sum(-1).mean())
    loss.terms["l1"].backward()
    assert sae.W_dec.grad is None or not sae.W_dec.grad.any()  # norms frozen, as in aux
    assert not sae.unit_norm_decoder


def test_auxk_is_off_by_default_and_trains_only_dead_gates_when_on():
    dead = torch.zeros(64, dtype=torch.bool)
    dead[:8] = True
    x = torch.randn(128, 16)
    assert "auxk" not in _gated().loss(x, StepState(dead_mask=dead)).terms
    sae = _gated(auxk_coeff=1 / 32)
    loss = sae.loss(x, StepState(dead_mask=dead))
    loss.terms["auxk"].backward()
    touched = sae.W_enc.grad.abs().sum(1) > 0
    assert touched[:8].any() and not touched[8:].any()
    assert sae.b_gate.grad[:8].any() and not sae.b_gate.grad[8:].any()


def test_auxk_reaches_gates_that_are_closed_on_every_input():
    # the failure AuxK is there for: a gate below zero everywhere gets no gradient through ReLU
    dead = torch.zeros(64, dtype=torch.bool)
    dead[:8] = True
    sae = _gated(auxk_coeff=1 / 32)
    with torch.no_grad():
        sae.b_gate[:8] = -100.0
    x = torch.randn(128, 16)
    assert (sae.pre_activations(x).gate[:, :8] < 0).all()
    sae.loss(x, StepState(dead_mask=dead)).terms["auxk"].backward()
    assert (sae.b_gate.grad[:8] != 0).all()


def test_folding_the_input_scale_gives_the_same_dictionary_on_raw_inputs():
    sae = _gated()
    x, s = torch.randn(20, 16) * 7 + 3, 0.13
    scaled = sae(x * s)
    sae.fold_input_scale(s)
    raw = sae(x)
    assert torch.equal(raw.codes != 0, scaled.codes != 0)
    assert torch.allclose(raw.x_hat, scaled.x_hat / s, atol=1e-4)


def test_stronger_l1_gives_fewer_active_latents():
    data = planted(n=8_000, d=32, n_atoms=128, mean_active=4, seed=1)
    l0 = []
    for coeff in (0.05, 0.5):
        sae = saelab.create("gated", d_in=32, n_latents=128, l1_coeff=coeff)
        sae = saelab.fit(sae, data.x, saelab.TrainConfig(steps=150, batch_size=512,
                                                         progress=False))
        l0.append((sae.encode(data.x[:2000]) != 0).sum(-1).float().mean().item())
    assert l0[1] < 0.7 * l0[0]


def test_gated_recovers_a_planted_dictionary():
    data = planted(n=20_000, d=32, n_atoms=128, mean_active=3, seed=0)
    torch.manual_seed(1)  # not 0: with seed 0 the initial rows would be the planted atoms
    sae = saelab.create("gated", d_in=32, n_latents=256, l1_coeff=1.0)
    sae = saelab.fit(sae, data.x, saelab.TrainConfig(steps=1000, batch_size=512, lr=4e-3,
                                                     seed=1, progress=False))
    _, recovered = recovery(data.atoms, sae.W_dec.detach())
    out = sae(data.x[:4000])
    assert recovered >= 0.85
    assert fvu(out.x_hat, data.x[:4000]) < 0.3
    assert (out.codes != 0).sum(-1).float().mean() < 4  # 3 planted directions per row


def test_encoder_starts_at_the_scale_that_reconstructs_the_input():
    torch.manual_seed(0)
    sae = saelab.create("gated", d_in=32, n_latents=512)
    x = torch.randn(2000, 32)
    ratio = sae(x).x_hat.norm(dim=1).mean() / x.norm(dim=1).mean()
    assert 0.7 < ratio < 1.3  # unit-norm tied rows would give about 512 / 64 = 8


def test_bad_fields_are_refused_naming_them():
    with pytest.raises(ConfigError, match="aux_decoder"):
        saelab.create("gated", d_in=8, n_latents=16, aux_decoder="free")
    with pytest.raises(ConfigError, match="l1_coeff"):
        saelab.create("gated", d_in=8, n_latents=16, l1_coeff=-0.1)
    with pytest.raises(ConfigError, match="l1_form"):
        saelab.create("gated", d_in=8, n_latents=16, l1_form="l2")
    with pytest.raises(ConfigError, match="aux_coeff"):
        saelab.create("gated", d_in=8, n_latents=16, aux_coeff=-1.0)
    with pytest.raises(ConfigError, match="l1_warmup"):
        saelab.create("gated", d_in=8, n_latents=16, l1_warmup=2.0)
