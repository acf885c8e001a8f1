"""tpp: ablating a class's own latent drops only that class's probe (planted), a latent shared
by two classes drops both (and scores worse), the figures follow SAEBench's definitions, the
ablation of pooled codes equals decoding the ablated codes with the error kept, dead latents and
thresholds above the number of latents are survived, transcoders are refused before work."""

from __future__ import annotations

import math

import pytest
import torch

import saelab
from saelab.errors import ConfigError
from saelab.evaluate._probe import stratified_split
from saelab.evaluate.tpp import (THRESHOLDS, ablate, decoder_directions, latent_effects,
                                 select_latents, targeted_probe_perturbation, tpp_figures)
from tests.conftest import tiny_llama


def concepts(n_per_class=80, n_classes=3, d=16, seed=0):
    """Texts of class c < n_classes carry unit direction u_c (magnitude about 3) plus noise; a
    last class (index n_classes) carries none, as texts of no concept (so that a probe learns
    that the absence of every concept is a negative, and ablated texts read as negatives)."""
    g = torch.Generator().manual_seed(seed)
    targets = torch.arange(n_classes + 1).repeat_interleave(n_per_class)
    u = torch.linalg.qr(torch.randn(d, d, generator=g))[0][:n_classes + 1]  # orthonormal
    magnitude = (3 + 0.3 * torch.rand(len(targets), generator=g)) * (targets < n_classes)
    raw = magnitude[:, None] * u[targets] + 0.5 * torch.randn(len(targets), d, generator=g)
    return raw, targets, u, magnitude


def monosemantic(raw, targets, u, magnitude, n_latents=12):
    """Latent c fires on class c with direction u_c; the other latents are dead."""
    codes = torch.zeros(len(targets), n_latents)
    codes[torch.arange(len(targets)), targets] = magnitude  # zero for the no-concept class
    directions = torch.zeros(n_latents, raw.shape[1])
    directions[:len(u)] = u
    return codes, directions


def split(targets):
    return stratified_split(targets, generator=torch.Generator().manual_seed(0))


def test_ablating_a_class_latent_drops_only_that_class_probe():
    raw, targets, u, magnitude = concepts()
    codes, directions = monosemantic(raw, targets, u, magnitude)
    result = targeted_probe_perturbation(raw, codes, targets, split(targets), directions,
                                         thresholds=(2, 5, 10))
    assert result.clean[:3].min() > 0.95 and result.clean[3] > 0.85
    for i in range(3):
        assert result.latents[i][0] == i  # the class's own latent has the largest effect
        drop = result.clean - result.ablated[0, i]
        assert drop[i] > 0.35                                   # its own probe falls to chance
        assert drop[[j for j in range(3) if j != i]].abs().max() < 0.05  # the others hold
        # (the no-concept probe may fall a little: ablated texts look like no concept at all)
    assert len(result.latents[3]) == 0  # no latent is more active in the no-concept class
    figures = tpp_figures(result.clean, result.ablated, (2, 5, 10))
    assert figures["tpp_threshold_2_total_metric"] > 0.25  # 3 of 4 classes at about 0.45
    assert abs(figures["tpp_threshold_2_unintended_diff_only"]) < 0.05


def test_a_latent_shared_by_two_classes_drops_both_and_scores_worse():
    raw, targets, u, magnitude = concepts()
    clean_codes, clean_dirs = monosemantic(raw, targets, u, magnitude)
    codes, directions = clean_codes.clone(), clean_dirs.clone()
    # latent 0 fires on classes 0 and 1 with direction u_0 + u_1; latent 1 is dead
    codes[:, 0] = torch.where(targets <= 1, magnitude, torch.zeros(()))
    codes[:, 1] = 0
    directions[0] = u[0] + u[1]
    train = split(targets)
    mixed = targeted_probe_perturbation(raw, codes, targets, train, directions, (2,))
    clean = targeted_probe_perturbation(raw, clean_codes, targets, train, clean_dirs, (2,))
    f_mixed = tpp_figures(mixed.clean, mixed.ablated, (2,))
    f_clean = tpp_figures(clean.clean, clean.ablated, (2,))
    assert (mixed.clean - mixed.ablated[0, 0])[1] > 0.35  # class 0's ablation hits class 1
    assert f_mixed["tpp_threshold_2_unintended_diff_only"] > 0.1
    assert f_clean["tpp_threshold_2_total_metric"] > f_mixed["tpp_threshold_2_total_metric"] + 0.1


def test_tpp_figures_follow_saebench_definitions():
    clean = torch.tensor([0.9, 0.8, 1.0])
    ablated = torch.tensor([[[0.5, 0.8, 0.9],
                             [0.9, 0.6, 1.0],
                             [0.8, 0.7, 0.5]]])  # [T=1, ablated i, probe j]
    f = tpp_figures(clean, ablated, (7,))
    intended = [0.4, 0.2, 0.5]
    unintended = [(0.0 + 0.1) / 2, (0.0 + 0.0) / 2, (0.1 + 0.1) / 2]
    assert f["tpp_threshold_7_intended_diff_only"] == pytest.approx(sum(intended) / 3)
    assert f["tpp_threshold_7_unintended_diff_only"] == pytest.approx(sum(unintended) / 3)
    assert f["tpp_threshold_7_total_metric"] == pytest.approx(
        (sum(intended) - sum(unintended)) / 3)


def test_effects_count_only_latents_more_active_in_the_class_and_selection_skips_zeros():
    codes = torch.tensor([[2.0, 0.0, 1.0], [2.0, 0.0, 1.0], [0.0, 1.0, 1.0], [0.0, 1.0, 1.0]])
    y = torch.tensor([1, 1, 0, 0])
    directions = torch.eye(3)
    effects = latent_effects(codes, y, torch.tensor([0.5, -3.0, 4.0]), directions)
    assert effects.tolist() == [1.0, 0.0, 0.0]  # latent 1 is less active in the class
    assert select_latents(effects, 2).tolist() == [0]
    assert select_latents(torch.zeros(3), 2).tolist() == []


def test_ablating_pooled_codes_equals_decoding_each_token_with_the_error_kept():
    sae = saelab.create("topk", d_in=16, n_latents=48, k=6, seed=0)
    x = torch.randn(5, 7, 16, generator=torch.Generator().manual_seed(0))  # [texts, tokens, d]
    latents = torch.tensor([3, 10, 40])
    with torch.no_grad():
        f = sae.encode(x.flatten(0, 1))
        error = x.flatten(0, 1) - sae.decode(f)
        f_ablated = f.clone()
        f_ablated[:, latents] = 0
        expected = (sae.decode(f_ablated) + error).view(5, 7, 16).mean(1)
        got = ablate(x.mean(1), f.view(5, 7, 48).mean(1), decoder_directions(sae), latents)
    assert torch.allclose(got, expected, atol=1e-5)


def test_decoder_directions_are_the_decoder_rows_of_an_sae():
    sae = saelab.create("relu", d_in=8, n_latents=20, seed=0)
    assert torch.allclose(decoder_directions(sae), sae.W_dec.detach(), atol=1e-6)


def test_thresholds_above_the_number_of_latents_are_nan_and_the_rest_finite():
    raw, targets, u, magnitude = concepts()
    codes, directions = monosemantic(raw, targets, u, magnitude, n_latents=12)
    codes[:, 5:] = 0  # dead latents
    result = targeted_probe_perturbation(raw, codes, targets, split(targets), directions)
    figures = tpp_figures(result.clean, result.ablated, THRESHOLDS)
    for n in THRESHOLDS:
        value = figures[f"tpp_threshold_{n}_total_metric"]
        assert math.isfinite(value) == (n <= 12), (n, value)


def test_a_transcoder_is_refused_before_the_model_runs():
    lm = tiny_llama(vocab=100, hidden=32, layers=2)
    tc = saelab.create("transcoder", d_in=32, d_out=32, n_latents=16, k=2)
    calls = []
    handle = lm.register_forward_pre_hook(lambda *_: calls.append(1))
    try:
        with pytest.raises(ConfigError, match="tpp: .*reconstructs its input"):
            saelab.evaluate(tc, metrics=("tpp",), model=lm, hookpoint="model.layers.0",
                            labels=(["a"] * 10 + ["b"] * 10, ["x"] * 10 + ["y"] * 10))
    finally:
        handle.remove()
    assert not calls
