"""Every registered dictionary, checked against the contract (DESIGN.md): shapes, save/load
round trip, one training step lowers the loss, determinism under a seed, config validation."""

from __future__ import annotations

import pytest
import torch

import saelab
from saelab.dictionaries import Output, StepState
from saelab.errors import ConfigError
from saelab.train.optim import make_optimizer
from saelab.train.step import train_step

D_IN, N_LATENTS = 16, 64


def make(name: str):
    torch.manual_seed(0)
    return saelab.create(name, d_in=D_IN, n_latents=N_LATENTS)


def pairs(sae, x):
    """(x, target): target None, or for dictionaries that predict another activation
    (`needs_target`, transcoders) a fixed nonlinear map of x of width d_out."""
    if "target" not in sae.needs:
        return x, None
    A = torch.randn(sae.d_in, sae.d_out, generator=torch.Generator().manual_seed(0))
    return x, torch.relu(x) @ A / sae.d_in ** 0.5


@pytest.fixture(params=saelab.architectures())
def name(request):
    return request.param


def test_registry_lists_sorted_names():
    names = saelab.architectures()
    assert names == sorted(names)
    assert {"relu", "topk"} <= set(names)


def test_shapes_of_encode_decode_forward(name):
    sae = make(name)
    x = torch.randn(7, D_IN)
    codes = sae.encode(x)
    assert codes.shape == (7, N_LATENTS)
    assert sae.decode(codes).shape == (7, sae.d_out)
    out = sae(x)
    assert isinstance(out, tuple) and out._fields[:2] == Output._fields
    assert torch.allclose(out.x_hat, sae.decode(codes))


def test_save_load_round_trip_is_bit_exact(name, tmp_path):
    sae = make(name)
    with torch.no_grad():
        for p in sae.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    sae.save(tmp_path / "d")
    back = saelab.load(tmp_path / "d")
    assert type(back) is type(sae) and back.cfg == sae.cfg
    for (n1, t1), (n2, t2) in zip(sae.state_dict().items(), back.state_dict().items()):
        assert n1 == n2 and torch.equal(t1, t2)
    x = torch.randn(5, D_IN)
    assert torch.equal(sae(x).x_hat, back(x).x_hat)


def test_one_training_step_lowers_the_loss(name, planted):
    sae = make(name)
    x = planted.x[:512, :D_IN] if planted.x.shape[1] >= D_IN else planted.x[:512]
    x, target = pairs(sae, x / x.pow(2).sum(-1).mean().sqrt())
    sae.init_from_data(x if target is None else target)
    state = StepState(step=50, total_steps=100)
    before = sae.loss(x, state, target).total.item()
    train_step(sae, make_optimizer(sae.parameters(), 1e-3), x, state, target)
    after = sae.loss(x, state, target).total.item()
    assert after < before


def test_training_is_deterministic_under_a_seed(name, planted):
    x, target = pairs(make(name), planted.x[:2048, :D_IN])
    data = x if target is None else (x, target)
    if "gradients" in make(name).needs:  # g-SAE: a fixed stand-in loss gradient
        grads = torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
        data = saelab.train.WithGradients(data, grads)
    cfg = saelab.TrainConfig(steps=5, batch_size=256, seed=3, progress=False)
    a = saelab.fit(make(name), data, cfg)
    b = saelab.fit(make(name), data, cfg)
    for t1, t2 in zip(a.state_dict().values(), b.state_dict().values()):
        assert torch.equal(t1, t2)


def test_unknown_field_is_a_config_error_naming_it(name):
    with pytest.raises(ConfigError, match="no_such_field"):
        saelab.create(name, d_in=D_IN, n_latents=N_LATENTS, no_such_field=1)


def test_non_positive_sizes_are_refused(name):
    with pytest.raises(ConfigError, match="n_latents"):
        saelab.create(name, d_in=D_IN, n_latents=0)
