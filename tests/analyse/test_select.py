"""Retrieval and clustering along chosen latents on planted presence: the latents chosen from
labels are the planted ones, retrieval by them finds the labelled documents, and clustering
follows whichever concept's latents are kept."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score

from saelab.analyse.select import cluster, latents_for_labels, retrieve
from saelab.errors import ConfigError, DataError
from tests.analyse.synthetic import embeddings_of


def _two_axes(n: int = 200, seed: int = 0):
    """Documents with a topic (latent 0 or 1) and, independently, a style (latent 2 or 3),
    plus 20 noise latents."""
    rng = np.random.default_rng(seed)
    topic, style = rng.integers(0, 2, n), rng.integers(0, 2, n)
    present = rng.random((n, 24)) < 0.3
    present[:, :4] = False
    present[np.arange(n), topic] = True
    present[np.arange(n), 2 + style] = True
    return embeddings_of(present), topic, style


def test_latents_chosen_from_labels_are_the_planted_ones() -> None:
    emb, topic, _ = _two_axes()
    chosen = latents_for_labels(emb, ["a" if t else "b" for t in topic], per_label=1)
    assert chosen == {"a": [1], "b": [0]}
    with pytest.raises(DataError, match="one per document"):
        latents_for_labels(emb, ["a"])


def test_retrieval_by_the_chosen_latent_ranks_its_documents_first() -> None:
    emb, topic, _ = _two_axes()
    top = retrieve(emb, [1], k=int(topic.sum()))
    assert topic[top].all()
    with pytest.raises(ConfigError, match="at least one latent"):
        retrieve(emb, [])


def test_clustering_follows_the_concept_whose_latents_are_kept() -> None:
    emb, topic, style = _two_axes()
    by_topic = cluster(emb, [0, 1], n_clusters=2)
    by_style = cluster(emb, [2, 3], n_clusters=2)
    assert adjusted_rand_score(topic, by_topic) == 1.0
    assert adjusted_rand_score(style, by_style) == 1.0
    assert abs(adjusted_rand_score(style, by_topic)) < 0.1
