"""separability: the Jensen-Shannon distance is scipy's; a planted monosemantic latent scores
above a polysemantic one and is its concept's best unit; the histograms bin as stated; a dead
latent scores 0 and an all-dead dictionary stays finite; shuffled labels give the finite-sample
level, below a planted concept. The family's refusals and its run on a tiny model and on
SmolLM2 are tested with fms (tests/evaluate/test_fms.py), which shares its pooled pass."""

from __future__ import annotations

import importlib
import math

import pytest
import torch

from saelab.evaluate.separability import (class_histograms, js_distance, separability,
                                          shuffled, summarize)

N_CLASSES = 5


def planted(n_per_class=100, n_latents=12, seed=0):
    """Pooled codes of N_CLASSES classes over sparse noise latents: latent 0 fires (about 1) on
    class 0 only; latent 1 fires on classes 1 and 2 (polysemantic); latent 2 is dead."""
    g = torch.Generator().manual_seed(seed)
    targets = torch.arange(N_CLASSES).repeat_interleave(n_per_class)
    codes = torch.rand(len(targets), n_latents, generator=g) \
        * (torch.rand(len(targets), n_latents, generator=g) < 0.3)
    codes[:, 0] = (targets == 0) * (1 + 0.2 * torch.rand(len(targets), generator=g))
    codes[:, 1] = ((targets == 1) | (targets == 2)) * (1 + 0.2 * torch.rand(len(targets),
                                                                             generator=g))
    codes[:, 2] = 0
    return codes, targets


def test_js_distance_is_scipys_base_2_distance():
    scipy = pytest.importorskip("scipy.spatial.distance")
    g = torch.Generator().manual_seed(0)
    p, q = torch.rand(6, 16, generator=g), torch.rand(6, 16, generator=g)
    q[:, :4] = 0  # zero bins on one side
    ours = js_distance(p, q)
    for i in range(6):
        assert abs(float(ours[i]) - scipy.jensenshannon(p[i].numpy(), q[i].numpy(), base=2)) \
            < 1e-6
    assert float(js_distance(p[0], p[0] * 3)) < 1e-6  # the same distribution, any scale
    assert abs(float(js_distance(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0]))) - 1) \
        < 1e-12  # disjoint supports


def test_a_monosemantic_latent_scores_above_a_polysemantic_one():
    codes, targets = planted()
    s = separability(codes, targets)  # [units, classes]
    assert s.shape == (codes.shape[1], N_CLASSES)
    assert float(s[0, 0]) > 0.99  # fires on class 0 and nowhere else: disjoint histograms
    assert float(s[0, 0]) > float(s[1].max()) + 0.2  # the polysemantic latent's best concept
    summary = summarize(s)
    assert summary.best_units[0] == 0 and summary.best_units[1] == 1
    # the polysemantic latent is still its concepts' best unit, but separates them less
    assert float(s[1, 1]) < float(s[0, 0]) - 0.2 and float(s[1, 2]) < float(s[0, 0]) - 0.2


def test_histograms_use_equal_width_bins_over_each_units_range():
    acts = torch.tensor([[0.0, 5.0], [1.0, 5.0], [2.0, 5.0], [4.0, 5.0]])
    targets = torch.tensor([0, 0, 1, 1])
    counts = class_histograms(acts, targets, 2, bins=4)  # unit 0: bins of width 1 over [0, 4]
    assert counts[0, 0].tolist() == [1, 1, 0, 0] and counts[1, 0].tolist() == [0, 0, 1, 1]
    assert counts[:, 1, 0].tolist() == [2, 2] and counts[:, 1, 1:].sum() == 0  # constant unit


def test_dead_latents_score_zero_and_an_all_dead_dictionary_stays_finite():
    codes, targets = planted()
    s = separability(codes, targets)
    assert torch.all(s[2] == 0)
    dead = separability(torch.zeros_like(codes), targets)
    assert torch.isfinite(dead).all() and torch.all(dead == 0)
    summary = summarize(dead)
    assert summary.mean == 0 and summary.best == 0 and math.isfinite(summary.mean)


def test_shuffled_labels_give_the_sample_level_below_a_planted_concept():
    codes, targets = planted()
    control = summarize(separability(codes, shuffled(targets, 0)))
    real = summarize(separability(codes, targets))
    assert control.best < 0.4 < real.best
    assert control.mean < real.mean


def test_units_are_chunked_without_changing_the_result(monkeypatch):
    module = importlib.import_module("saelab.evaluate.separability")  # evaluate: a function

    codes, targets = planted(n_latents=10)
    whole = separability(codes, targets)
    monkeypatch.setattr(module, "UNITS_PER_CHUNK", 3)
    assert torch.equal(separability(codes, targets), whole)
