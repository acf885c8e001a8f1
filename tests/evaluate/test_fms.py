"""fms: a concept held by one monosemantic latent scores above the same concept held by a
polysemantic one; the parts follow the paper's formulas (capacity, local, global) on planted
codes; the tree cut at each depth scores as a tree grown to that depth; dead latents give finite
figures; the family reports latents and neurons side by side, refuses bad labels before the
model runs, and runs end to end on SmolLM2."""

from __future__ import annotations

import math
import time

import pytest
import torch
from sklearn.tree import DecisionTreeClassifier

import saelab
from saelab.data.labelled import LabelledTexts
from saelab.errors import ConfigError, DataError
from saelab.evaluate.fms import CUTS, concept_fms, fms_figures, fms_scores, tree_accuracies
from tests.conftest import tiny_llama
from tests.evaluate.concepts import Counted, labelled

HOOKPOINT = "model.layers.0"
N_CLASSES = 5


def planted(poly: bool, n_per_class=80, n_latents=24, seed=0):
    """Pooled codes of N_CLASSES classes over sparse noise latents: latent 0 fires (about 1) on
    class 0 and, when `poly`, on class 1 as well; nothing else carries class 0."""
    g = torch.Generator().manual_seed(seed)
    targets = torch.arange(N_CLASSES).repeat_interleave(n_per_class)
    codes = torch.rand(len(targets), n_latents, generator=g) \
        * (torch.rand(len(targets), n_latents, generator=g) < 0.3)
    fires = (targets == 0) | ((targets == 1) & poly)
    codes[:, 0] = fires * (1 + 0.2 * torch.rand(len(targets), generator=g))
    return codes, targets


def test_a_monosemantic_latent_scores_above_a_polysemantic_one():
    mono = fms_scores(*planted(poly=False))
    poly = fms_scores(*planted(poly=True))
    assert mono.roots[0][0] == 0 and poly.roots[0][0] == 0  # the latent is found in both
    for j in range(len(CUTS)):
        assert mono.fms[0, j] > poly.fms[0, j] + 0.15, (mono.fms[0], poly.fms[0])
    assert mono.capacity[0] == 1.0 and poly.capacity[0] < 0.95
    assert mono.global_[0] == 1.0 and poly.global_[0] < 1.0  # one split is all the mono needs


def test_removing_the_one_unit_of_a_concept_drops_it_to_near_chance():
    codes, targets = planted(poly=False)
    y = (targets == 0).long()
    keep = torch.cat([(y == 1).nonzero()[:, 0], (y == 0).nonzero()[:80, 0]])  # balanced
    r = concept_fms(codes[keep], y[keep])
    assert r.capacity == 1.0 and r.roots[0] == 0
    # accs_1 is the best noise latent's accuracy (about 0.6 on 160 inputs), so local ~ 0.8
    assert 0.6 < r.local[0] <= 1.0
    assert torch.allclose(r.fms, r.capacity * (r.local + r.global_) / 2)


def test_a_concept_spread_over_two_units_has_global_below_one():
    g = torch.Generator().manual_seed(0)
    acts = torch.rand(400, 6, generator=g)
    y = ((acts[:, 0] > 0.5) & (acts[:, 1] > 0.5)).long()  # needs both units
    r = concept_fms(acts, y)
    assert r.capacity < 0.9 and r.global_ < 1.0
    assert set(r.roots[:2]) == {0, 1}


def test_tree_cut_at_each_depth_scores_as_the_tree_grown_to_that_depth():
    g = torch.Generator().manual_seed(3)
    x = torch.rand(300, 5, generator=g).numpy()
    y = ((x[:, 0] + x[:, 1] ** 2 + 0.3 * x[:, 2]) > 1.0).astype(int)
    full = DecisionTreeClassifier(random_state=0).fit(x, y)
    acc = tree_accuracies(full)
    assert len(acc) == full.get_depth() + 1 and acc[-1] == 1.0
    assert abs(float(acc[0]) - max(y.mean(), 1 - y.mean())) < 1e-9  # the majority's share
    for d in range(1, full.get_depth() + 1):
        grown = DecisionTreeClassifier(max_depth=d, random_state=0).fit(x, y)
        assert abs(float(acc[d]) - grown.score(x, y)) < 1e-9, d


def test_dead_latents_give_finite_figures():
    codes, targets = planted(poly=False)
    codes[:, 1::2] = 0  # half the latents never fire
    figures = fms_figures(fms_scores(codes, targets))
    assert all(math.isfinite(v) for v in figures.values())
    dead = fms_scores(torch.zeros_like(codes), targets)
    assert torch.all(dead.capacity == 0.5) and torch.all(dead.local == 0)
    assert torch.all(dead.global_ == 1.0) and torch.all(dead.fms == 0.25)
    assert dead.roots == [[] for _ in range(N_CLASSES)]


def test_latents_and_neurons_use_the_same_balanced_sets():
    """Same targets and seed: the same texts for both, so the two sets of figures compare."""
    codes, targets = planted(poly=False)
    a = fms_scores(codes, targets, seed=4)
    b = fms_scores(codes.clone(), targets, seed=4)
    assert torch.equal(a.fms, b.fms) and a.roots == b.roots


# --- the family, on a tiny model ------------------------------------------------------------
@pytest.fixture(scope="module")
def lm():
    return tiny_llama(vocab=100, hidden=32, layers=2)




@pytest.mark.parametrize("family", ["fms", "separability"])
def test_bad_labels_and_a_missing_model_are_refused_before_the_model_runs(lm, family):
    sae = saelab.create("topk", d_in=32, n_latents=16, k=4, seed=0)
    cases = [(dict(labels=(["a", "b", "c"], ["x", "y"]), model=lm), DataError,
              "3 texts but 2 labels"),
             (dict(labels=LabelledTexts(["t"] * 12, ["only"] * 12, tokens=[[1, 2]] * 12),
                   model=lm), DataError, "1 class"),
             (dict(labels=None, model=lm), ConfigError, "labels:"),
             (dict(labels=labelled(), model=None), ConfigError, "model:")]
    for kwargs, error, message in cases:
        with Counted(lm) as forwards, pytest.raises(error, match=message):
            saelab.evaluate(sae, metrics=(family,), hookpoint=HOOKPOINT, **kwargs)
        assert forwards.count == 0


def test_fms_and_separability_report_latents_and_neurons_with_dead_latents(lm):
    sae = saelab.create("topk", d_in=32, n_latents=64, k=4, seed=0)
    with torch.no_grad():  # half the latents can never win the top-k
        sae.W_enc[::2] = 0
        sae.b_enc[::2] = -1e4
    with Counted(lm) as forwards:
        report = saelab.evaluate(sae, metrics=("fms", "separability"), model=lm,
                                 labels=labelled(), hookpoint=HOOKPOINT, seed=0)
    assert forwards.count == math.ceil(40 / 16)  # the two families share one pooled pass
    fms, sep = report["fms"], report["separability"]
    assert all(math.isfinite(v) for v in {**fms, **sep}.values())
    for p in CUTS:
        assert f"fms_at_{p}" in fms and f"neuron_fms_at_{p}" in fms
        assert 0.0 <= fms[f"fms_at_{p}"] <= 1.0 and 0.0 <= fms[f"neuron_fms_at_{p}"] <= 1.0
    assert 0.5 <= fms["fms_capacity"] <= 1.0 and 0.5 <= fms["neuron_fms_capacity"] <= 1.0
    assert {"separability_mean", "neuron_separability_mean", "separability_max",
            "neuron_separability_max"} <= set(sep)
    assert fms["n_classes"] == sep["n_classes"] == 2 and fms["n_texts"] == 40


# --- end to end ---------------------------------------------------------------------------
@pytest.mark.slow
def test_fms_and_separability_on_smollm2_wikipedia_topics_within_a_minute():
    from saelab.data.labelled import wikipedia_topics
    from saelab.models import load

    start = time.perf_counter()
    lm = load("smollm2-135m")
    texts = wikipedia_topics(per_class=24).tokenize(lm.tokenizer, context_len=64)
    sae = saelab.create("topk", d_in=576, n_latents=1024, k=32, seed=0)
    report = saelab.evaluate(sae, metrics=("fms", "separability"), model=lm.model,
                             labels=texts, hookpoint="model.layers.4", seed=0)
    elapsed = time.perf_counter() - start
    fms, sep = report["fms"], report["separability"]
    assert fms["n_classes"] == 11 and fms["n_texts"] == 264
    assert all(math.isfinite(v) for v in {**fms, **sep}.values())
    # the model's neurons do tell the topics apart better than the shuffled-label level
    assert sep["neuron_separability_max"] > sep["neuron_separability_mean_shuffled"]
    assert fms["neuron_fms_capacity"] > 0.6
    assert elapsed < 60, elapsed
