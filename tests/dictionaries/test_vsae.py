"""vSAE: Gaussian posterior sampling on the TopK selection, with a KL term to N(0, 1)."""

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
    return saelab.create("vsae", d_in=16, n_latents=64, k=4, init_log_var=-2.0, **fields)


def x_batch(n=64):
    return torch.randn(n, 16, generator=torch.Generator().manual_seed(1))


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
    a, b, c = (saelab.create("vsae", d_in=8, n_latents=16, k=2, seed=s) for s in (3, 3, 4))
    assert int(a.noise_seed) == int(b.noise_seed) != int(c.noise_seed)


def test_noise_seed_follows_the_torch_seed_when_creation_is_unseeded():
    seeds = []
    for s in (3, 3, 4):
        torch.manual_seed(s)
        seeds.append(int(saelab.create("vsae", d_in=8, n_latents=16, k=2, seed=None).noise_seed))
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
                         ("learn_variance", "yes")]:
        with pytest.raises(ConfigError, match=field):
            saelab.create("vsae", d_in=8, n_latents=16, **{"k": 2, field: value})
