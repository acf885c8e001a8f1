"""The autointerp metric family: it reports a `saelab explain` results file (each scorer's mean
over the features, NaN for a scorer absent), and without one explains and scores features on the
evaluation's own tokens (the token baseline, embedding scoring), with finite figures."""

from __future__ import annotations

import json
import math

import pytest
import torch

import saelab
from saelab.capture import capture
from saelab.evaluate import family
from tests.conftest import tiny_llama
from tests.evaluate.test_families import HOOKPOINT, word_tokenizer

Autointerp = family("autointerp")


@pytest.fixture
def configured():
    """Restores the family's config after a test changes it."""
    saved = Autointerp.config
    yield Autointerp
    Autointerp.config = saved


@pytest.fixture(scope="module")
def setup():
    lm = tiny_llama(vocab=100, hidden=32, layers=2)
    lm.tokenizer = word_tokenizer(100)
    tokens = torch.randint(2, 100, (48, 8), generator=torch.Generator().manual_seed(0))
    x = capture(lm, [HOOKPOINT], tokens)[HOOKPOINT].flatten(0, 1)
    sae = saelab.create("topk", d_in=32, n_latents=64, k=4, seed=1)
    return sae, lm, tokens, x


def test_a_results_file_is_reported_as_each_scorers_mean(setup, configured, tmp_path):
    from saelab.interpret.explain.run import append_result
    from saelab.interpret.explain.examples import Sampling  # noqa: F401  (package importable)

    path = tmp_path / "explanations.jsonl"
    for f, (det, emb) in enumerate([(0.9, 0.8), (0.5, None), (0.7, 0.6)]):
        append_result(path, {"feature": f, "explanation": "x", "scores":
                             {"detection": det, "embedding": emb}})
    append_result(path, {"feature": 3, "explanation": None, "scores": {"detection": None}})
    configured.config = configured.config.__class__(explanations=str(path))
    sae, lm, tokens, x = setup
    report = saelab.evaluate(sae, x, metrics=["autointerp"], model=lm, tokens=tokens,
                             hookpoint=HOOKPOINT)["autointerp"]
    assert report["n_features"] == 3
    assert report["detection"] == pytest.approx((0.9 + 0.5 + 0.7) / 3)
    assert report["embedding"] == pytest.approx(0.7)
    assert math.isnan(report["fuzzing"]) and math.isnan(report["intervention"])


def test_without_a_file_it_explains_and_scores_features_on_the_tokens(setup, configured):
    configured.config = configured.config.__class__(n_features=3)
    sae, lm, tokens, x = setup
    report = saelab.evaluate(sae, x, metrics=["autointerp"], model=lm, tokens=tokens,
                             hookpoint=HOOKPOINT)["autointerp"]
    assert report["n_features"] == 3
    assert 0.0 <= report["embedding"] <= 1.0
    assert math.isnan(report["detection"])  # not asked for


def test_the_token_baseline_names_the_marked_tokens():
    from saelab.interpret.explain import Example, FeatureExamples
    from saelab.evaluate.autointerp import token_explanation

    ex = [Example([1, 2], [" the", " dog"], [0.0, 2.0], "top"),
          Example([1, 2], [" a", " dog"], [0.1, 3.0], "top")]
    feature = FeatureExamples(0, ex, [], [], 2, 3.0)
    assert token_explanation(feature) == 'The tokens "dog".'
    assert json.dumps(token_explanation(feature))


def test_only_features_with_examples_and_negatives_are_chosen_so_each_gets_a_score(setup,
                                                                                  configured):
    """A feature firing in every context has no negative to be scored against: never chosen;
    every chosen one fires in 15 contexts or more and is silent in 10 or more, and is scored."""
    import copy

    configured.config = configured.config.__class__(n_features=6)
    sae, lm, tokens, x = setup
    sae = copy.deepcopy(sae)
    with torch.no_grad():
        sae.b_enc[0] = 1e4  # latent 0 fires on every token
    records = []
    original = Autointerp.explain_here

    def kept(self):
        records.extend(original(self))
        return records

    configured.explain_here = kept
    try:
        report = saelab.evaluate(sae, x, metrics=["autointerp"], model=lm, tokens=tokens,
                                 hookpoint=HOOKPOINT)["autointerp"]
    finally:
        configured.explain_here = original
    chosen = [r["feature"] for r in records]
    assert len(chosen) == 6 and 0 not in chosen
    contexts = (sae.encode(x) > 0).view(tokens.shape[0], tokens.shape[1], -1).any(1).sum(0)
    assert all(15 <= int(contexts[f]) <= tokens.shape[0] - 10 for f in chosen)
    assert report["n_features"] == 6 and all(r["scores"]["embedding"] is not None
                                             for r in records)
