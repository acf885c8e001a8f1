"""Transcoders and skip transcoders: predicting a module's output from its input (a known linear
map plus a sparse part), training from (x, y) pairs and from a two-hookpoint store, and the
errors when there is no target."""

from __future__ import annotations

import pytest
import torch

import saelab
from saelab.dictionaries import StepState
from saelab.errors import ConfigError, DataError
from tests.conftest import tiny_llama


def linear_plus_sparse(n=20_000, d_in=32, d_out=24, n_atoms=32, active=2, dense=0.5, seed=0):
    """x = signed sparse codes @ input atoms + dense Gaussian; y = A x + |codes| @ output atoms.

    The sparse part is gated by x's sparse codes but uncorrelated with x (the signs are
    symmetric), so the best linear map from x to y is A; the dense part of x pins the skip term
    to A (latents can hardly represent a dense Gaussian). Returns (x, y, A).
    """
    g = torch.Generator().manual_seed(seed)
    atoms = torch.nn.functional.normalize(torch.randn(n_atoms, d_in, generator=g), dim=1)
    out_atoms = torch.nn.functional.normalize(torch.randn(n_atoms, d_out, generator=g), dim=1)
    A = torch.randn(d_out, d_in, generator=g) / d_in ** 0.5
    idx = torch.rand(n, n_atoms, generator=g).argsort(dim=1)[:, :active]  # [n, active]
    mags = torch.rand(n, active, generator=g) + 0.5
    signs = torch.randint(0, 2, (n, active), generator=g) * 2 - 1
    codes = torch.zeros(n, n_atoms).scatter_(1, idx, mags * signs)
    x = codes @ atoms + dense * torch.randn(n, d_in, generator=g)
    return x, x @ A.T + codes.abs() @ out_atoms, A


def fvu(y_hat, y):
    return ((y_hat - y).pow(2).sum() / (y - y.mean(0)).pow(2).sum()).item()


def linear_fit_fvu(x, y):
    """FVU of the best affine map from x to y (least squares)."""
    X = torch.cat([x, torch.ones(len(x), 1)], 1)
    return fvu(X @ torch.linalg.lstsq(X, y).solution, y)


def train(name, x, y, steps=500, **fields):
    torch.manual_seed(0)
    tc = saelab.create(name, d_in=x.shape[1], d_out=y.shape[1], **fields)
    return saelab.fit(tc, (x, y), saelab.TrainConfig(steps=steps, batch_size=512, lr=1e-2,
                                                     progress=False))


def test_skip_transcoder_learns_the_known_linear_map_and_the_sparse_part():
    x, y, A = linear_plus_sparse()
    tc = train("skip_transcoder", x, y, n_latents=128, k=2)
    assert ((tc.W_skip - A).norm() / A.norm()).item() < 0.15  # measured 0.065-0.07
    with torch.no_grad():
        out = tc(x[-4000:])
    # the latents carry the sparse part: better than any linear map of x alone
    assert fvu(out.x_hat, y[-4000:]) < linear_fit_fvu(x, y) - 0.03


def test_transcoder_predicts_a_nonlinear_sparse_map_with_low_fvu():
    x, y, _ = linear_plus_sparse(active=3, dense=0.0)
    tc = train("transcoder", x, y, n_latents=128, k=3)
    with torch.no_grad():
        error = fvu(tc(x[-4000:]).x_hat, y[-4000:])
    assert error < 0.1  # measured 0.055; the best linear map of x leaves about half
    assert error < 0.25 * linear_fit_fvu(x, y)


def test_transcoder_trains_end_to_end_from_a_store_with_two_hookpoints(tmp_path):
    """Input and output of one module, of different widths (the MLP's down projection)."""
    model = tiny_llama()
    tokens = torch.randint(2, 64, (64, 32), generator=torch.Generator().manual_seed(0))
    site = "model.layers.1.mlp.down_proj"
    store = saelab.store.capture_to_store(model, tokens, [f"{site}:input", site],
                                          tmp_path / "store", model_name="tiny", progress=False)
    cfg = saelab.TrainConfig(steps=400, batch_size=256, lr=1e-2, hookpoint=f"{site}:input",
                             target_hookpoint=site, progress=False, out=str(tmp_path / "run"))
    torch.manual_seed(0)
    tc = saelab.fit(saelab.create("skip_transcoder", d_in=64, d_out=32, n_latents=128, k=4),
                    store, cfg)
    assert tc.provenance["hookpoint"] == f"{site}:input"
    assert tc.provenance["data_target_hookpoint"] == site
    x, _ = next(store.iter_rows(f"{site}:input", batch_size=1000))
    y, _ = next(store.iter_rows(site, batch_size=1000))
    with torch.no_grad():
        assert fvu(tc(x).x_hat, y) < 0.01  # measured 0.0003
    # the module is linear (no bias): the skip term is close to its weight (measured error
    # 0.155; the latents carry a little of the linear map too)
    W = model.model.layers[1].mlp.down_proj.weight
    assert ((tc.W_skip - W).norm() / W.norm()).item() < 0.25
    back = saelab.load(tmp_path / "run" / "sae")
    assert back.cfg == tc.cfg and torch.equal(back.W_skip, tc.W_skip)


def test_a_transcoder_without_targets_is_a_clear_error(tmp_path):
    tc = saelab.create("transcoder", d_in=16, n_latents=64, k=4)
    with pytest.raises(DataError, match="target_hookpoint"):
        tc.loss(torch.randn(8, 16), StepState())
    x = torch.randn(1024, 16)
    with pytest.raises(DataError, match=r"MODULE:input"):
        saelab.fit(tc, x, saelab.TrainConfig(steps=2, batch_size=256, progress=False))
    # a store with one hookpoint: nothing to predict
    store = saelab.store.capture_to_store(tiny_llama(), torch.randint(2, 64, (16, 16)),
                                          ["model.layers.1"], tmp_path / "one", model_name="tiny",
                                          progress=False)
    sk = saelab.create("skip_transcoder", d_in=32, n_latents=64, k=4)
    with pytest.raises(DataError, match="skip_transcoder.*target_hookpoint"):
        saelab.fit(sk, store, saelab.TrainConfig(steps=2, batch_size=64, progress=False))


def test_encoder_reads_the_input_itself_not_input_minus_b_dec():
    tc = saelab.create("transcoder", d_in=16, n_latents=64, k=4)
    x = torch.randn(20, 16)
    before = tc.encode(x)
    with torch.no_grad():
        tc.b_dec.normal_()  # the output's bias: no business in the encoder
    assert torch.equal(tc.encode(x), before)


def perturbed(name):
    """A small transcoder with random weights (no parameter at its initial value)."""
    torch.manual_seed(0)
    tc = saelab.create(name, d_in=16, d_out=12, n_latents=64, k=4)
    with torch.no_grad():
        for p in tc.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    return tc


@pytest.mark.parametrize("name", ["transcoder", "skip_transcoder"])
def test_folding_the_input_scale_gives_the_same_transcoder_on_raw_inputs(name):
    tc = perturbed(name)
    x, s = torch.randn(30, 16) * 7 + 1, 0.13
    with torch.no_grad():
        scaled = tc(x * s).x_hat / s
        skip = tc.W_skip.clone() if name == "skip_transcoder" else None
        tc.fold_input_scale(s)
        assert torch.allclose(tc(x).x_hat, scaled, atol=1e-4)
    if skip is not None:  # input and target share the scale: the linear map is unchanged
        assert torch.equal(tc.W_skip, skip)


@pytest.mark.parametrize("name", ["transcoder", "skip_transcoder"])
def test_folding_separate_input_and_target_scales_gives_the_transcoder_on_raw_data(name):
    tc = perturbed(name)
    x, sx, sy = torch.randn(30, 16) * 7 + 1, 0.13, 40.0
    with torch.no_grad():
        scaled = tc(x * sx).x_hat / sy  # trained on (sx x, sy y): predicts sy y
        tc.fold_scales(sx, sy)
        assert torch.allclose(tc(x).x_hat, scaled, atol=1e-4)


@pytest.mark.parametrize("target_scale", [1e-3, 1e3])
def test_a_target_far_smaller_or_larger_than_the_input_trains_as_well(target_scale):
    """Input and target are normalised each (an MLP's output can be 1000x smaller than its
    input): scaling y changes nothing but the units of the saved transcoder."""
    x, y, _ = linear_plus_sparse(active=3, dense=0.0)
    tc = train("transcoder", x, y * target_scale, n_latents=128, k=3, steps=300)
    with torch.no_grad():
        error = fvu(tc(x[-4000:]).x_hat, y[-4000:] * target_scale)
    assert error < 0.15  # measured 0.07 at 300 steps, at either scale
    assert tc.provenance["target_scale"] != tc.provenance["input_scale"]


def test_skip_transcoder_output_is_the_sparse_part_plus_the_skip_term():
    tc = saelab.create("skip_transcoder", d_in=16, d_out=12, n_latents=64, k=4)
    assert not tc.W_skip.any()  # starts as a plain transcoder
    with torch.no_grad():
        tc.W_skip.normal_()
    x = torch.randn(10, 16)
    out = tc(x)
    assert torch.allclose(out.skip, x @ tc.W_skip.T)
    assert torch.allclose(out.x_hat, tc.decode(out.codes) + out.skip, atol=1e-5)
    assert out.x_hat.shape == (10, 12) and out.codes.shape == (10, 64)


def test_relu_transcoder_uses_an_l1_penalty_and_no_auxk_by_default():
    tc = saelab.create("transcoder", d_in=16, d_out=8, n_latents=64, activation="relu")
    assert tc.cfg.auxk_coeff == 0
    x, y = torch.randn(32, 16), torch.randn(32, 8)
    loss = tc.loss(x, StepState(dead_mask=torch.ones(64, dtype=torch.bool)), y)
    assert set(loss.terms) == {"mse", "l1"}
    assert torch.allclose(loss.terms["l1"], tc.encode(x).sum(-1).mean())
    topk = saelab.create("transcoder", d_in=16, d_out=8, n_latents=64, k=4)
    assert "auxk" in topk.loss(x, StepState(dead_mask=torch.ones(64, dtype=torch.bool)), y).terms


def test_transcoder_fields_are_validated():
    with pytest.raises(ConfigError, match="k"):
        saelab.create("transcoder", d_in=8, n_latents=16, k=17)
    with pytest.raises(ConfigError, match="activation"):
        saelab.create("skip_transcoder", d_in=8, n_latents=16, k=4, activation="jumprelu")
    with pytest.raises(ConfigError, match="l1_coeff"):
        saelab.create("transcoder", d_in=8, n_latents=16, k=4, l1_coeff=-1.0)
    with pytest.raises(ConfigError, match="d_out"):
        saelab.create("transcoder", d_in=8, n_latents=16, k=4, d_out=0)
