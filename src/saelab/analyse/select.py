"""Controllable uses of SAE embeddings: keep only the latents of chosen concepts, then rank
documents by them (property-based retrieval) or cluster along them.

    >>> latents = latents_for_labels(emb, labels)["Mathematics"]     # from labelled examples
    >>> ranked = retrieve(emb, latents)                              # best documents first
    >>> groups = cluster(emb, sorted(set().union(*by_label.values())), n_clusters=11)

Jiang et al. 2025 ("Interpretable Embeddings with Sparse Autoencoders: A Data Analysis
Toolkit", sections on clustering and retrieval) pick the latents of a concept by matching an
LLM's labels of the latents to a query, filter the embedding down to them, and cluster or rank
on what is left; dense embeddings cannot be filtered that way. With no labeller here, saelab
picks a concept's latents from a few labelled documents instead (`latents_for_labels`: the
latents whose document frequency differs most between the documents with the label and the
rest, the same statistic as `diff`), or takes the indices the user chose.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from saelab.analyse.embeddings import Embeddings
from saelab.errors import ConfigError, DataError


def concept_matrix(emb: Embeddings, latents: Sequence[int]) -> np.ndarray:
    """The pooled codes of `latents` only [N, L], each column divided by its largest value in
    the corpus, so that latents of different scales weigh alike."""
    chosen = _checked(latents, emb.n_latents)
    x_NL = emb.matrix()[:, chosen].toarray().astype(np.float64)
    top_L = x_NL.max(0)
    return x_NL / np.where(top_L > 0, top_L, 1.0)


def retrieve(emb: Embeddings, latents: Sequence[int], k: int | None = None) -> np.ndarray:
    """Document indices ranked by how strongly the chosen `latents` fire in them (the sum of
    their scaled pooled codes), best first; the first `k` when given."""
    score_N = concept_matrix(emb, latents).sum(1)
    order = np.argsort(-score_N, kind="stable")
    return order if k is None else order[:k]


def cluster(emb: Embeddings, latents: Sequence[int], n_clusters: int, seed: int = 0
            ) -> np.ndarray:
    """A cluster index per document [N], from k-means (scikit-learn, 10 starts) on the
    L2-normalised rows of the embedding filtered to `latents`."""
    from sklearn.cluster import KMeans
    from sklearn.preprocessing import normalize

    if not 1 < n_clusters <= len(emb):
        raise ConfigError(f"n_clusters must lie between 2 and the {len(emb)} documents, got "
                          f"{n_clusters}")
    x_NL = normalize(concept_matrix(emb, latents))
    return KMeans(n_clusters, n_init=10, random_state=seed).fit_predict(x_NL)


def latents_for_labels(emb: Embeddings, labels: Sequence[str], per_label: int = 10,
                       threshold: float = 0.0) -> dict[str, list[int]]:
    """For each label, the `per_label` latents whose document frequency among the documents
    with that label exceeds their frequency among the rest by the most (largest first)."""
    labels = np.asarray(list(labels))
    if len(labels) != len(emb):
        raise DataError(f"{len(labels)} labels for {len(emb)} documents: give one per document")
    active = emb.active(threshold)
    out = {}
    for label in sorted(set(labels.tolist())):
        inside = labels == label
        if inside.all():
            raise DataError(f"every document has the label {label!r}: nothing to contrast")
        freq_in = np.asarray(active[inside].mean(0)).ravel()
        freq_out = np.asarray(active[~inside].mean(0)).ravel()
        order = np.argsort(-(freq_in - freq_out), kind="stable")[:per_label]
        out[label] = [int(i) for i in order]
    return out


def _checked(latents: Sequence[int], n_latents: int) -> np.ndarray:
    chosen = np.asarray(list(latents), dtype=np.int64)
    if not len(chosen) or ((chosen < 0) | (chosen >= n_latents)).any():
        raise ConfigError(f"choose at least one latent, each in [0, {n_latents}); got "
                          f"{list(latents)[:10]}")
    return chosen
