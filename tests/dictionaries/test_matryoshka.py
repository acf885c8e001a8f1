"""Matryoshka SAE (Bussmann et al. 2025; Nabeshima 2024): nested prefixes of the dictionary each
reconstruct the input, latents are picked by BatchTopK, inference uses a learned threshold."""

from __future__ import annotations

import pytest
import torch

import saelab
from saelab.data.synthetic import planted
from saelab.dictionaries import StepState
from saelab.dictionaries._base import fvu
from saelab.dictionaries.matryoshka import default_prefixes
from saelab.ops.bags import batch_topk
from saelab.errors import ConfigError


def _matryoshka(**kw):
    torch.manual_seed(0)
    sae = saelab.create("matryoshka", d_in=16, n_latents=64, **kw)
    with torch.no_grad():
        sae.b_enc.normal_(0, 0.1)
        sae.b_dec.normal_(0, 0.1)
    return sae


def _dense_batch_topk(pre, k):
    acts = pre.relu()
    keep = acts.reshape(-1).topk(k * pre.shape[0]).indices
    mask = torch.zeros(acts.numel()).scatter_(0, keep, 1.0).view_as(acts)
    return acts * mask


def test_batch_topk_keeps_the_k_times_batch_largest_codes_of_the_whole_batch():
    torch.manual_seed(0)
    pre = torch.randn(50, 40)
    codes = batch_topk(pre, 3)
    assert codes.values.shape == (150,)
    dense = torch.zeros(50, 40).index_put_((codes.rows, codes.latents), codes.values)
    assert torch.equal(dense, _dense_batch_topk(pre, 3))
    per_row = torch.bincount(codes.rows, minlength=50)
    assert per_row.sum() == 150 and per_row.min() < 3 < per_row.max()  # not 3 per row
    # a floor below the selection's smallest value gives the same selection, faster
    fast = batch_topk(pre, 3, floor=float(codes.values.min()) / 2)
    assert all(torch.equal(a, b) for a, b in zip(codes, fast))


@pytest.mark.parametrize("batch", [64, 100])
def test_training_keeps_k_times_batch_active_codes(batch):
    sae = _matryoshka(k=4)
    loss = sae.loss(torch.randn(batch, 16), StepState())
    assert loss.metrics["l0"] * batch == pytest.approx(4 * batch)


def test_each_prefix_reconstructs_with_its_first_latents_only():
    sae = _matryoshka(k=4, prefixes=[8, 24, 64], auxk_coeff=0.0)
    x = torch.randn(80, 16)
    loss = sae.loss(x, StepState())
    assert set(loss.terms) == {"mse_8", "mse_24", "mse_64"}
    codes = _dense_batch_topk(sae.pre_activations(x), 4)
    for m in (8, 24, 64):
        x_hat = codes[:, :m] @ sae.W_dec[:m] + sae.b_dec
        assert torch.allclose(loss.terms[f"mse_{m}"], (x_hat - x).pow(2).sum(-1).mean(),
                              rtol=1e-5)
        assert loss.metrics[f"fvu_{m}"] == pytest.approx(fvu(x_hat, x).item(), rel=1e-4)
    assert torch.allclose(loss.total, sum(loss.terms.values()))  # summed, unweighted
    loss.terms["mse_8"].backward()
    touched = sae.W_dec.grad.abs().sum(1) > 0
    assert touched[:8].any() and not touched[8:].any()


def test_gradients_match_a_dense_reference():
    sae = _matryoshka(k=3, auxk_coeff=0.0)
    x = torch.randn(40, 16)
    sae.loss(x, StepState()).total.backward()
    fast = {n: p.grad.clone() for n, p in sae.named_parameters()}
    sae.zero_grad()
    codes = _dense_batch_topk(sae.pre_activations(x), 3)
    sum((codes[:, :m] @ sae.W_dec[:m] + sae.b_dec - x).pow(2).sum(-1).mean()
        for m in sae.cfg.prefixes).backward()
    for n, p in sae.named_parameters():
        assert torch.allclose(fast[n], p.grad, atol=1e-5), n


def test_threshold_is_learned_in_training_and_then_used_by_encode():
    sae = _matryoshka(k=4)
    x = torch.randn(128, 16)
    assert sae.threshold < 0
    before = sae.encode(x)  # no threshold yet: BatchTopK over the given batch
    assert (before != 0).sum() == 4 * 128
    sae.loss(x, StepState())
    kept = _dense_batch_topk(sae.pre_activations(x), 4)
    assert sae.threshold == kept[kept > 0].min()  # first batch: its smallest kept code
    sae.eval()
    sae.loss(x * 3, StepState())
    assert sae.threshold == kept[kept > 0].min()  # evaluation does not move it
    pre = sae.pre_activations(x)
    assert torch.equal(sae.encode(x), torch.where(pre > sae.threshold, pre, 0.0))


def _fit(data, **kw):
    torch.manual_seed(1)  # not 0: with seed 0 the initial rows would be the planted atoms
    sae = saelab.create("matryoshka", d_in=32, n_latents=256, k=3, **kw)
    return saelab.fit(sae, data.x, saelab.TrainConfig(steps=600, batch_size=512, lr=4e-3,
                                                      seed=1, progress=False))


def test_prefixes_reconstruct_and_first_prefix_is_a_usable_sae():
    data = planted(n=20_000, d=32, n_atoms=128, mean_active=3, seed=0)
    sae = _fit(data)
    x = data.x[:4000]
    full = fvu(sae(x).x_hat, x).item()
    l0 = (sae.encode(x) != 0).sum(-1).float().mean().item()
    assert 0.7 * 3 < l0 < 1.3 * 3  # the learned threshold keeps about k latents per row
    fvus = {m: fvu(sae.prefix(m)(x).x_hat, x).item() for m in sae.cfg.prefixes}
    assert all(f < 1 for f in fvus.values())  # every prefix beats predicting the mean
    assert fvus[16] < 0.7  # 16 latents alone (1/16 of the dictionary) explain most
    assert fvus[256] == pytest.approx(full)
    assert full < 0.25
    assert list(fvus.values()) == sorted(fvus.values(), reverse=True)


def test_first_prefix_holds_the_parents_of_hierarchical_features():
    # 8 parents, each with 3 children that only ever fire together with it
    data = planted(n=20_000, d=32, n_atoms=128, mean_active=3, n_parents=8,
                   children_per_parent=3, seed=0)
    nested, flat = _fit(data), _fit(data, prefixes=[256])  # flat: the same BatchTopK SAE
    children = torch.arange(8, 32)
    absorbed = []
    for sae in (nested, flat):
        learned = sae.W_dec / sae.W_dec.norm(dim=1, keepdim=True)
        cos = data.atoms @ learned.T  # [atoms, latents]
        if sae is nested:
            assert (cos[:8].argmax(1) < 16).float().mean() >= 0.6  # chance: 1/16
            assert cos[:8, :16].max(1).values.mean() > 0.7
        # how much of its parent's direction a child's latent carries (feature absorption)
        child_latents = learned[cos[children].argmax(1)]
        absorbed.append((child_latents * data.atoms[data.parents[children]]).sum(-1).mean())
    assert absorbed[0] < absorbed[1]


def test_prefix_codes_are_the_full_codes_restricted():
    sae = _matryoshka(k=4, prefixes=[8, 24, 64])
    x = torch.randn(100, 16)
    sae.loss(x, StepState())  # learn a threshold
    small = sae.prefix(24)
    assert small.n_latents == 24 and small.cfg.prefixes == [8, 24]
    assert torch.equal(small.encode(x), sae.encode(x)[:, :24])
    codes = sae.encode(x)
    codes[:, 24:] = 0
    assert torch.allclose(small(x).x_hat, sae.decode(codes), atol=1e-6)


def test_auxk_is_on_by_default_and_trains_only_dead_latents():
    sae = _matryoshka(k=4)
    dead = torch.zeros(64, dtype=torch.bool)
    dead[-8:] = True
    loss = sae.loss(torch.randn(128, 16), StepState(dead_mask=dead))
    assert loss.terms["auxk"] > 0
    loss.terms["auxk"].backward()
    touched = sae.W_enc.grad.abs().sum(1) > 0
    assert touched[-8:].any() and not touched[:-8].any()


def test_folding_the_input_scale_gives_the_same_dictionary_on_raw_inputs():
    sae = _matryoshka(k=4)
    x, s = torch.randn(100, 16) * 7 + 3, 0.13
    sae.loss(x * s, StepState())
    scaled = sae(x * s)
    sae.fold_input_scale(s)
    raw = sae(x)
    assert torch.equal(raw.codes != 0, scaled.codes != 0)
    assert torch.allclose(raw.x_hat, scaled.x_hat / s, atol=1e-4)


def test_default_prefixes_halve_down_to_a_sixteenth():
    assert default_prefixes(4608) == [288, 576, 1152, 2304, 4608]
    assert saelab.create("matryoshka", d_in=8, n_latents=64).cfg.prefixes == [4, 8, 16, 32, 64]
    assert default_prefixes(4) == [1, 2, 4]


@pytest.mark.parametrize("prefixes", [[16, 8, 64], [8, 8, 64], [0, 8, 64], [8, 32], [8, 65],
                                      [], "8,64", [8.0, 64]])
def test_bad_prefixes_are_refused_naming_the_field(prefixes):
    with pytest.raises(ConfigError, match="prefixes"):
        saelab.create("matryoshka", d_in=8, n_latents=64, prefixes=prefixes)


def test_bad_k_and_auxk_are_refused_naming_the_field():
    with pytest.raises(ConfigError, match="k"):
        saelab.create("matryoshka", d_in=8, n_latents=16, k=17)
    with pytest.raises(ConfigError, match="auxk_coeff"):
        saelab.create("matryoshka", d_in=8, n_latents=16, k=4, auxk_coeff=-1.0)


def test_to_inference_is_a_jumprelu_with_the_same_codes_and_refused_before_training():
    sae = saelab.create("matryoshka", d_in=16, n_latents=64, k=4)
    with pytest.raises(ConfigError, match="no inference threshold yet"):
        sae.to_inference()
    x = planted(d=16, n_atoms=64, n=2048, mean_active=3, seed=0).x
    sae.train()
    sae.loss(x[:512], StepState())  # a training batch sets the threshold
    sae.eval()
    jump = sae.to_inference()
    assert jump.architecture == "jumprelu" and not jump.training
    assert torch.equal(jump.exact_tensors["threshold"], sae.threshold.expand(64))
    theta = float(sae.threshold)
    pre = sae.pre_activations(x)
    clear = ((pre - theta).abs() > 1e-6).all(-1)  # rows with no code at the threshold itself
    assert clear.any()
    assert torch.equal(jump.encode(x)[clear], sae.encode(x)[clear])
