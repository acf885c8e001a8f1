"""vSAE: the paper's fixed-variance form (KL on every latent's mean, warm-up, deterministic
forward, free decoder) and saelab's sampled form (learned variance, KL on the selected latents)."""

from __future__ import annotations

import math

import pytest
import torch

import saelab
from saelab.dictionaries import StepState
from saelab.dictionaries.vsae import gaussian_kl
from saelab.errors import ConfigError


def make(**fields):
    torch.manual_seed(0)
    return saelab.create("vsae", d_in=16, n_latents=64, k=4, init_log_var=-2.0,
                         posterior="sampled", **fields)


def make_fixed(**fields):
    torch.manual_seed(0)
    return saelab.create("vsae", d_in=16, n_latents=64, k=4, **fields)


def x_batch(n=64):
    return torch.randn(n, 16, generator=torch.Generator().manual_seed(1))


def test_default_is_the_papers_form():
    cfg = saelab.create("vsae", d_in=8, n_latents=16, k=2).cfg
    assert (cfg.posterior, cfg.kl_warmup, cfg.kl_coeff, cfg.unit_norm_decoder) == (
        "fixed", 0.1, 1.0, False)


def test_fixed_kl_acts_on_every_latent_not_only_the_selected():
    sae = make_fixed(kl_warmup=0.0)
    x = x_batch(8)
    pre = sae.pre_activations(x)
    loss = sae.loss(x, StepState(step=0, total_steps=10))
    # 0.5 * sum of the ReLU'd means over all 64 latents, batch mean
    assert torch.allclose(loss.terms["kl"], 0.5 * pre.relu().pow(2).sum(-1).mean())
    loss.terms["kl"].backward()
    selected = torch.zeros(64, dtype=torch.bool)
    selected[pre.topk(4, dim=-1).indices.reshape(-1)] = True
    unselected_positive = ~selected & (pre > 0).any(0)
    assert unselected_positive.sum() > 10
    # the KL's gradient reaches latents TopK never selected in this batch
    grad_rows = sae.W_enc.grad.abs().sum(-1)
    assert (grad_rows[unselected_positive] > 0).all()


def test_fixed_variance_forward_is_deterministic_and_equals_the_topk_decode():
    sae = make_fixed(kl_warmup=0.0)
    x = x_batch()
    a = sae.loss(x, StepState(step=0, total_steps=10))
    b = sae.loss(x, StepState(step=7, total_steps=10))
    assert torch.equal(a.total, b.total)  # no noise: every step sees the same forward
    expected = (sae.decode(sae.encode(x)) - x).pow(2).sum(-1).mean()
    assert torch.allclose(a.terms["mse"], expected, rtol=1e-5)
    assert not hasattr(sae, "log_var")  # no variance parameter in the fixed form
    assert torch.equal(sae.sample(x), sae.encode(x))


def test_kl_weight_warms_up_linearly_over_the_first_tenth_of_the_run():
    sae = make_fixed(kl_coeff=2.0)
    x = x_batch()
    weights = []
    for step in (0, 50, 100, 500):
        loss = sae.loss(x, StepState(step=step, total_steps=1000))
        weights.append(loss.metrics["kl_weight"])
        assert torch.allclose(loss.total, loss.terms["mse"] + weights[-1] * loss.terms["kl"])
    assert weights == [0.0, 1.0, 2.0, 2.0]


def test_fixed_form_keeps_decoder_rows_free_in_training():
    from saelab.train.step import train_step

    sae = make_fixed()
    assert not sae.unit_norm_decoder
    opt = torch.optim.Adam(sae.parameters(), lr=1e-2)
    for step in range(3):
        train_step(sae, opt, x_batch(), StepState(step=step, total_steps=3))
    norms = sae.W_dec.detach().norm(dim=-1)
    assert (norms - 1).abs().max() > 1e-3
    assert make_fixed(unit_norm_decoder=True).unit_norm_decoder


def test_kl_matches_the_closed_form_and_is_finite():
    sae = make(kl_coeff=0.5)
    x = x_batch()
    loss = sae.loss(x, StepState(step=0))
    kl = loss.terms["kl"]
    assert torch.isfinite(kl) and kl > 0
    # recompute from the selected means: 0.5 * (mu^2 + sigma^2 - 1 - log sigma^2) over k latents
    means = sae.pre_activations(x).topk(4, dim=-1).values.relu()
    expected = 0.5 * (means.pow(2) + math.exp(-2.0) - 1 + 2.0).sum(-1).mean()
    assert torch.allclose(kl, expected, rtol=1e-5)
    assert torch.allclose(loss.total, loss.terms["mse"] + 0.5 * kl)
    assert gaussian_kl(torch.zeros(3), torch.zeros(3)).abs().max() == 0  # prior against itself


def test_kl_gradient_reaches_the_log_variance():
    sae = make(kl_coeff=1.0)
    sae.loss(x_batch(), StepState(step=0)).total.backward()
    assert sae.log_var.grad is not None and sae.log_var.grad.abs().sum() > 0


def test_training_samples_vary_between_steps_and_repeat_within_a_step():
    sae = make()
    x = x_batch()
    a = sae.loss(x, StepState(step=0)).total
    b = sae.loss(x, StepState(step=0)).total
    c = sae.loss(x, StepState(step=1)).total
    assert torch.equal(a, b)  # one step, one draw: two evaluations compare the same noise
    assert not torch.equal(a, c)  # another step draws other noise


def test_samples_vary_under_a_seed_and_repeat_for_the_same_seed():
    sae = make()
    x = x_batch()
    torch.manual_seed(5)
    s1, s2 = sae.sample(x), sae.sample(x)
    torch.manual_seed(5)
    s3 = sae.sample(x)
    assert not torch.equal(s1, s2)
    assert torch.equal(s1, s3)
    # the noise only moves the values of the latents TopK selected on the means
    assert torch.equal(s1 > 0, (s1 > 0) & (sae.encode(x) > 0))


def test_noise_seed_follows_the_creation_seed():
    a, b, c = (saelab.create("vsae", d_in=8, n_latents=16, k=2, seed=s, posterior="sampled")
               for s in (3, 3, 4))
    assert int(a.noise_seed) == int(b.noise_seed) != int(c.noise_seed)


def test_noise_seed_follows_the_torch_seed_when_creation_is_unseeded():
    seeds = []
    for s in (3, 3, 4):
        torch.manual_seed(s)
        seeds.append(int(saelab.create("vsae", d_in=8, n_latents=16, k=2, seed=None,
                                       posterior="sampled").noise_seed))
    assert seeds[0] == seeds[1] != seeds[2]


def test_inference_encode_is_deterministic_and_equals_topk():
    sae = make()
    x = x_batch()
    torch.manual_seed(0)
    first = sae.encode(x)
    torch.manual_seed(1)
    assert torch.equal(first, sae.encode(x))
    topk = saelab.create("topk", d_in=16, n_latents=64, k=4)
    topk.load_state_dict({k: v for k, v in sae.state_dict().items()
                          if k in topk.state_dict()})
    assert torch.equal(first, topk.encode(x))
    assert ((first > 0).sum(-1) <= 4).all()


def test_fixed_variance_gets_no_gradient():
    sae = make(learn_variance=False)
    assert not sae.log_var.requires_grad


def test_bad_fields_are_config_errors_naming_them():
    for field, value in [("kl_coeff", -1.0), ("k", 0), ("init_log_var", 50.0),
                         ("learn_variance", "yes"), ("posterior", "learned"),
                         ("kl_warmup", 1.5), ("unit_norm_decoder", 1)]:
        with pytest.raises(ConfigError, match=field):
            saelab.create("vsae", d_in=8, n_latents=16, **{"k": 2, field: value})
