"""BatchTopK (Bussmann, Leask and Nanda 2024): k x batch latents over the whole batch in
training, a learned inference threshold that makes eval-mode codes per-row, and conversion to a
JumpReLU with that threshold."""

from __future__ import annotations

import pytest
import torch

import saelab
from saelab.data.synthetic import planted, recovery
from saelab.dictionaries import StepState
from saelab.dictionaries.batchtopk import batch_topk
from saelab.errors import ConfigError


def make(**fields):
    torch.manual_seed(0)
    return saelab.create("batchtopk", d_in=16, n_latents=64, **fields)


def unit_batch(n=64, d=16, seed=0):
    x = torch.randn(n, d, generator=torch.Generator().manual_seed(seed))
    return x / x.pow(2).sum(-1).mean().sqrt()


def test_batch_keeps_k_times_batch_latents_in_total_with_varying_counts_per_row():
    sae = make(k=5)
    with torch.no_grad():
        sae.b_enc.fill_(10.0)  # every pre-activation positive: exactly k x B survive
    x = unit_batch(100) * torch.linspace(0.2, 3.0, 100)[:, None]  # rows of different norms
    codes = sae.encode(x)  # training mode: the batch selection
    counts = (codes != 0).sum(-1)
    assert counts.sum() == 5 * 100
    assert counts.min() < 5 < counts.max()  # rows differ in their counts
    assert sae.loss(x, StepState()).metrics["l0"] == pytest.approx(5.0)


def reference_selection(pre, k):
    top = pre.reshape(-1).topk(k * pre.shape[0])
    mask = torch.zeros(pre.numel(), dtype=torch.bool)
    mask[top.indices[top.values > 0]] = True
    return mask.view(pre.shape)


@pytest.mark.parametrize("shift", [0.0, -1.5, -3.0])
def test_selection_is_the_largest_positive_pre_activations_of_the_whole_batch(shift):
    g = torch.Generator().manual_seed(1)
    pre = torch.randn(64, 100, generator=g) + shift  # shifted down: fewer than k x B positive
    pre[3] += 6.0  # one row holds more than 2k of the batch's largest (beyond the candidates)
    values, indices, valid = batch_topk(pre, 7)
    chosen = torch.zeros(64, 100).scatter_add_(1, indices, values * valid) != 0
    assert torch.equal(chosen, reference_selection(pre, 7))
    assert chosen[3].sum() > 14
    assert torch.equal(values[valid], pre.gather(1, indices)[valid])


def test_a_batch_without_positive_pre_activations_has_no_codes_and_leaves_theta():
    sae = make(k=4)
    with torch.no_grad():
        sae.b_enc.fill_(-100.0)
    loss = sae.loss(unit_batch(), StepState())
    loss.total.backward()
    assert loss.metrics["l0"] == 0 and not loss.active.any() and torch.isfinite(loss.total)
    assert int(sae.threshold_batches) == 0 and sae.threshold == 0


def test_training_gradients_equal_the_dense_computation():
    sae = make(k=4, auxk_coeff=0.0)
    x = unit_batch()
    with torch.no_grad():
        sae.b_dec.normal_(0, 0.1)
    sae.loss(x, StepState()).total.backward()
    ours = {n: p.grad.clone() for n, p in sae.named_parameters()}
    sae.zero_grad()
    pre = (x - sae.b_dec) @ sae.W_enc.T + sae.b_enc
    codes = pre * reference_selection(pre.detach(), 4)
    ((codes @ sae.W_dec + sae.b_dec - x).pow(2).sum(-1).mean()).backward()
    for name, p in sae.named_parameters():
        assert torch.allclose(ours[name], p.grad, rtol=1e-4, atol=1e-6), name


def test_threshold_is_the_running_average_of_the_smallest_kept_activation():
    sae = make(k=4, threshold_decay=0.5)
    mins = []
    for seed in range(4):
        x = unit_batch(seed=seed)
        codes = sae.encode(x)
        mins.append(codes[codes > 0].min().item())
        sae.loss(x, StepState())
    # weights 1, 1/2 (the first 1/(1-decay) = 2 batches equally), then 0.5 each
    expected = mins[0]
    for w, m in zip((1 / 2, 0.5, 0.5), mins[1:]):
        expected += w * (m - expected)
    assert sae.threshold.item() == pytest.approx(expected, rel=1e-5)
    assert int(sae.threshold_batches) == 4
    sae.eval()
    sae.loss(unit_batch(seed=9), StepState())  # eval mode: theta left alone
    assert int(sae.threshold_batches) == 4


def test_threshold_is_learned_by_training_and_saved(planted, tmp_path):
    sae = saelab.create("batchtopk", d_in=32, n_latents=64, k=3)
    sae = saelab.fit(sae, planted.x, saelab.TrainConfig(steps=30, batch_size=256,
                                                        progress=False))
    assert sae.threshold > 0 and int(sae.threshold_batches) == 30
    sae.save(tmp_path / "d")
    back = saelab.load(tmp_path / "d")
    assert torch.equal(back.threshold, sae.threshold)
    assert torch.equal(back.eval().encode(planted.x[:50]), sae.encode(planted.x[:50]))


def test_eval_mode_codes_are_per_row_and_apply_the_threshold():
    sae = make(k=4)
    x = unit_batch()
    for seed in range(3):
        sae.loss(unit_batch(seed=seed), StepState())
    sae.eval()
    codes = sae.encode(x)
    others = torch.cat([x[:1], unit_batch(len(x) - 1, seed=3) * 5])  # row 0 kept, rest replaced
    assert torch.equal(sae.encode(others)[0], codes[0])  # a row's codes ignore the other rows
    alone = torch.cat([sae.encode(x[i:i + 1]) for i in range(len(x))])
    assert torch.allclose(codes, alone, atol=1e-6)  # (one row at a time: another float kernel)
    pre = sae.pre_activations(x)
    assert torch.equal(codes, torch.where(pre > sae.threshold, pre, 0.0))
    sae.train()
    assert not torch.equal(sae.encode(x[:8])[0], sae.encode(x[:16])[0])  # training: batch-wise


def test_to_inference_gives_a_jumprelu_with_identical_outputs():
    sae = make(k=4)
    with torch.no_grad():
        sae.b_dec.normal_(0, 0.1)
    for seed in range(3):
        sae.loss(unit_batch(seed=seed), StepState())
    sae.eval()
    jump = sae.to_inference()
    assert jump.architecture == "jumprelu" and not jump.training
    assert torch.allclose(jump.threshold, sae.threshold.expand(64))
    x = unit_batch(200, seed=5)
    a, b = sae(x), jump(x)
    assert torch.equal(a.codes, b.codes) and torch.equal(a.x_hat, b.x_hat)
    assert (a.codes != 0).any()


def test_folding_the_input_scale_gives_the_same_dictionary_on_raw_inputs():
    sae = make(k=4)
    with torch.no_grad():
        sae.b_enc.normal_(0, 0.1)
        sae.b_dec.normal_()
    for seed in range(3):
        sae.loss(unit_batch(seed=seed), StepState())
    sae.eval()
    x, s = unit_batch(seed=7) * 7, 0.13
    scaled = sae(x * s).x_hat / s
    sae.fold_input_scale(s)
    assert torch.allclose(sae(x).x_hat, scaled, atol=1e-4)


def test_auxk_is_on_by_default_and_reaches_only_dead_latents():
    sae = make(k=4)
    dead = torch.zeros(64, dtype=torch.bool)
    dead[:8] = True
    loss = sae.loss(unit_batch(256), StepState(dead_mask=dead))
    assert loss.terms["auxk"] > 0
    loss.terms["auxk"].backward()
    touched = sae.W_enc.grad.abs().sum(1) > 0
    assert touched[:8].any() and not touched[8:].any()


def test_recovers_planted_directions():
    """Planted data with a known answer (128 directions in 32 dims, about 3 active per vector):
    training recovers a good part of them (60% here at 2,500 steps; a random dictionary
    recovers none) and the learned threshold gives about k active latents per row."""
    data = planted(n=20_000, d=32, n_atoms=128, mean_active=3, seed=0)
    torch.manual_seed(0)
    sae = saelab.create("batchtopk", d_in=32, n_latents=256, k=3)
    sae = saelab.fit(sae, data.x, saelab.TrainConfig(steps=2500, batch_size=512, seed=0,
                                                     progress=False))
    _, recovered = recovery(data.atoms, sae.W_dec.detach())
    l0 = (sae.encode(data.x[:4000]) != 0).sum(-1).float().mean().item()
    assert recovered >= 0.45
    assert 2.5 <= l0 <= 3.5  # the learned threshold gives about k per row at inference


@pytest.mark.parametrize("field, value", [("k", 65), ("k", 0), ("threshold_decay", 1.0),
                                          ("threshold_decay", -0.1), ("auxk_coeff", -1.0)])
def test_bad_fields_are_config_errors_naming_the_field(field, value):
    with pytest.raises(ConfigError, match=field):
        saelab.create("batchtopk", d_in=8, n_latents=64, **{field: value})
