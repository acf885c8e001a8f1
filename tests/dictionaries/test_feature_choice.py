"""Feature Choice SAE: each latent picks at most its capacity m_i of a batch's inputs."""

from __future__ import annotations

import pytest
import torch

import saelab
from saelab.errors import ConfigError
from saelab.ops.allocation import feature_capacity, zipf_capacities


def popular_sae(capacity: str):
    """A random Feature Choice SAE whose first 8 latents have a large encoder bias, so that
    without the cap they would fire on every input."""
    torch.manual_seed(0)
    sae = saelab.create("feature_choice", d_in=16, n_latents=64, k=4, capacity=capacity)
    with torch.no_grad():
        sae.b_enc[:8] = 10.0
    return sae


@pytest.mark.parametrize("capacity", ["uniform", "zipf"])
def test_feature_choice_never_gives_a_latent_more_than_its_capacity(capacity):
    sae = popular_sae(capacity)
    x = torch.randn(200, 16)
    caps = sae.capacities(200)
    counts = (sae.encode(x) != 0).sum(0)  # [n_latents] inputs each latent took
    assert (counts <= caps).all()
    assert (counts[:8] == caps[:8]).all()  # the popular latents use their full capacity ...
    assert (caps[:8] < 200).all()  # ... which is less than the 200 inputs they fire on
    assert (sae.pre_activations(x)[:, :8] > 0).all()


def test_feature_choice_loss_uses_the_same_capped_selection():
    sae = popular_sae("uniform")
    x = torch.randn(200, 16)
    out = sae.loss(x, saelab.dictionaries.StepState())
    caps = sae.capacities(200)
    assert out.metrics["l0"] == pytest.approx(float((sae.encode(x) != 0).sum(-1).float().mean()))
    assert out.metrics["l0"] <= float(caps.sum()) / 200


def test_feature_choice_gives_inputs_different_numbers_of_latents():
    sae = popular_sae("uniform")
    l0 = (sae.encode(torch.randn(200, 16)) != 0).sum(-1)
    assert l0.max() > l0.min()


@pytest.mark.parametrize("capacity", ["uniform", "zipf"])
@pytest.mark.parametrize("k,batch,n_latents", [(5, 512, 1024), (4, 200, 64), (3, 97, 128),
                                               (1, 100, 512), (32, 1024, 4608)])
def test_feature_choice_capacities_sum_to_exactly_k_times_batch(capacity, k, batch, n_latents):
    # 5 x 512 / 1024 = 2.5 tokens per latent: one rounded m would spend 2 x 1024 = 80% of it
    sae = saelab.create("feature_choice", d_in=8, n_latents=n_latents, k=k, capacity=capacity)
    caps = sae.capacities(batch)
    assert int(caps.sum()) == k * batch
    assert caps.min() >= 0 and caps.max() <= batch


def test_uniform_capacities_differ_by_at_most_one_and_share_the_remainder_over_batches():
    caps = torch.stack([feature_capacity(5, 512, 1024, offset) for offset in (0, 512)])
    assert set(caps.unique().tolist()) == {2, 3}
    assert (caps.sum(0) == 5).all()  # two batches: every latent got the extra token once


def test_zipf_capacities_spend_the_budget_in_zipf_shape():
    caps = zipf_capacities(4, 256, 512)
    assert int(caps.sum()) == 4 * 256
    assert (caps[:-1] >= caps[1:]).all() and caps.min() >= 1
    assert caps[0] == pytest.approx(2 * caps[1], abs=1)  # rank 1 vs rank 2: 1 : 1/2


def test_feature_choice_inference_does_not_depend_on_the_batch(planted):
    x = planted.x[:2048, :16]
    sae = saelab.fit(saelab.create("feature_choice", d_in=16, n_latents=64, k=3), x,
                     saelab.TrainConfig(steps=20, batch_size=256, seed=0, progress=False))
    assert not sae.training and (sae.threshold > 0).any()
    # the same rows get the same codes alone or among 295 others (up to the rounding of the
    # matrix product, whose kernel depends on the batch size; a batch-level selection would
    # change which latents fire)
    torch.testing.assert_close(sae.encode(x[:5]), sae.encode(x[:300])[:5], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("field,value", [("capacity", "round_robin"), ("aux", "l1"),
                                         ("k", 0), ("usage_decay", 1.0)])
def test_feature_choice_bad_fields_are_named(field, value):
    with pytest.raises(ConfigError, match=field):
        saelab.create("feature_choice", d_in=16, n_latents=64, **{field: value})
