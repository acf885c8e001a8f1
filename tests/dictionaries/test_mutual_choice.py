"""Mutual Choice SAE: a batch spends exactly its budget of k x batch (input, latent) pairs,
allocated freely between inputs."""

from __future__ import annotations

import pytest
import torch

import saelab
from saelab.dictionaries import StepState
from saelab.errors import ConfigError
from saelab.ops.auxk import auxk_loss


def make(k=4):
    torch.manual_seed(0)
    return saelab.create("mutual_choice", d_in=16, n_latents=64, k=k)


@pytest.mark.parametrize("batch", [1, 7, 200])
def test_mutual_choice_spends_exactly_k_times_batch(batch):
    sae = make(k=4)
    x = torch.randn(batch, 16) * torch.linspace(0.2, 3, batch)[:, None]  # inputs of mixed size
    codes = sae.encode(x)
    assert int((codes != 0).sum()) == 4 * batch
    loss = sae.loss(x, StepState())
    assert loss.metrics["l0"] == pytest.approx(4.0)


def test_mutual_choice_allocates_more_latents_to_some_inputs():
    sae = make(k=4)
    x = torch.randn(200, 16) * torch.linspace(0.2, 3, 200)[:, None]
    l0 = (sae.encode(x) != 0).sum(-1)
    assert l0.max() > 4 > l0.min()  # not TopK: the per-input count varies around k
    assert l0[100:].sum() > l0[:100].sum()  # the larger inputs get more of the budget


def test_mutual_choice_keeps_the_largest_pairs_of_the_batch():
    sae = make(k=4)
    x = torch.randn(50, 16)
    pre = sae.pre_activations(x)
    codes = sae.encode(x)
    kept, dropped = pre[codes != 0], pre[codes == 0]
    assert kept.min() >= dropped.max()


def test_mutual_choice_inference_does_not_depend_on_the_batch(planted):
    x = planted.x[:2048, :16]
    sae = saelab.fit(make(k=3), x, saelab.TrainConfig(steps=20, batch_size=256, seed=0,
                                                       progress=False))
    assert not sae.training and float(sae.threshold) > 0
    assert torch.equal(sae.encode(x[:5]), sae.encode(x[:300])[:5])


@pytest.mark.parametrize("field,value", [("aux", "l1"), ("k", 65), ("aux_coeff", -1.0),
                                         ("zipf_exponent", 0.0), ("threshold_decay", 1.0)])
def test_mutual_choice_bad_fields_are_named(field, value):
    with pytest.raises(ConfigError, match=field):
        saelab.create("mutual_choice", d_in=16, n_latents=64, **{field: value})


def test_mutual_choice_with_auxk_revives_dead_latents_as_topk_does():
    # aux="auxk": the same AuxK term (coefficient 1/32, d_in // 2 latents) a TopK SAE adds
    torch.manual_seed(0)
    mc = saelab.create("mutual_choice", d_in=16, n_latents=64, k=4, aux="auxk")
    topk = saelab.create("topk", d_in=16, n_latents=64, k=4)
    assert (mc.cfg.aux_coeff, mc.cfg.aux_k) == (topk.cfg.auxk_coeff, topk.cfg.auxk_k)
    topk.load_state_dict(mc.state_dict(), strict=False)
    dead = torch.zeros(64, dtype=torch.bool)
    dead[40:] = True
    x = torch.randn(32, 16)
    out_mc = mc.loss(x, StepState(dead_mask=dead))
    out_topk = topk.loss(x, StepState(dead_mask=dead))
    assert out_mc.terms["aux"] > 0
    torch.testing.assert_close(out_mc.total - out_mc.terms["mse"],
                               topk.cfg.auxk_coeff * out_mc.terms["aux"])
    # the AuxK of TopK on the residual Mutual Choice leaves is the same function
    with torch.no_grad():
        residual = x - mc(x).x_hat
        expected = auxk_loss(mc.centered(x), residual, mc.W_enc, mc.b_enc, mc.W_dec, dead,
                             topk.cfg.auxk_k)
    torch.testing.assert_close(out_mc.terms["aux"].detach(), expected)
    assert "auxk" in out_topk.terms
