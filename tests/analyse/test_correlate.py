"""Concept correlations on planted presence: the planted pair is found with its expected count
under independence; independent latents are not reported."""

from __future__ import annotations

import numpy as np
import pytest

from saelab.analyse.correlate import cooccurrences, format_cooccurrences
from saelab.errors import ConfigError, DataError
from tests.analyse.synthetic import embeddings_of


def _planted(n: int = 400, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    present = rng.random((n, 40)) < 0.2
    present[:, 5] = np.where(present[:, 3], rng.random(n) < 0.9, rng.random(n) < 0.05)
    return present


def test_the_planted_pair_is_found_with_its_expected_count() -> None:
    present = _planted()
    result = cooccurrences(embeddings_of(present))
    top = result.pairs[0]
    assert (top.latent_a, top.latent_b) == (3, 5)
    assert top.together == int((present[:, 3] & present[:, 5]).sum())
    n3, n5 = present[:, 3].sum(), present[:, 5].sum()
    assert top.expected == pytest.approx(n3 * n5 / len(present))
    assert top.together > 3 * top.expected and top.npmi > 0.5 and top.q_value < 1e-10


def test_independent_latents_are_not_reported_after_the_correction() -> None:
    result = cooccurrences(embeddings_of(_planted()))
    assert result.n_significant == 1 and len(result.pairs) == 1
    assert result.n_pairs == 40 * 39 // 2


def test_chosen_latents_restrict_the_pairs() -> None:
    result = cooccurrences(embeddings_of(_planted()), latents=[5])
    assert result.n_pairs == 39 and (result.pairs[0].latent_a, result.pairs[0].latent_b) == (3, 5)
    assert all(5 in (p.latent_a, p.latent_b) for p in result.pairs)
    assert "3" in format_cooccurrences(result)
    with pytest.raises(ConfigError, match="indices"):
        cooccurrences(embeddings_of(_planted()), latents=[40])


def test_latents_in_nearly_every_document_are_left_out() -> None:
    present = np.ones((50, 4), bool)
    with pytest.raises(DataError, match="no pair of latents"):
        cooccurrences(embeddings_of(present))


def test_pairs_that_peak_on_the_same_token_are_left_out_unless_asked_for() -> None:
    emb = embeddings_of(_planted())
    keep = emb.latents_Z == 5
    emb.spans_Z2[keep] = 0  # latent 5 now peaks where latent 3 does in the documents with both
    emb.spans_Z2[emb.latents_Z == 3] = 0
    assert cooccurrences(emb).pairs == []
    kept = cooccurrences(emb, max_same_token=None).pairs
    assert (kept[0].latent_a, kept[0].latent_b) == (3, 5) and kept[0].same_token == 1.0
