"""Embeddings built from a planted presence matrix (no model): for the statistics' tests."""

from __future__ import annotations

import numpy as np

from saelab.analyse import Embeddings
from saelab.data import Document


def embeddings_of(present: np.ndarray, settings: dict | None = None,
                  prefix: str = "doc") -> Embeddings:
    """Embeddings whose document i holds latent j (pooled code 1 + j / 100, peak on the word
    "w{j}") wherever present[i, j]."""
    rows, latents = np.nonzero(present)
    counts = np.bincount(rows, minlength=present.shape[0])
    texts = [" ".join(f"w{j}" for j in np.flatnonzero(r)) or "nothing" for r in present]
    spans = []
    for i, j in zip(rows, latents):
        start = texts[i].split(" ").index(f"w{j}")
        start = sum(len(w) + 1 for w in texts[i].split(" ")[:start])
        spans.append((start, start + len(f"w{j}")))
    return Embeddings(np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
                      latents.astype(np.int32), (1 + latents / 100).astype(np.float32),
                      np.asarray(spans, np.int32).reshape(-1, 2),
                      np.full(present.shape[0], 10, np.int32), present.shape[1],
                      [Document(t, f"{prefix}{i}") for i, t in enumerate(texts)],
                      {"dictionary": "d" * 64, "hookpoint": "h", "pooling": "max",
                       "max_tokens": 128, **(settings or {})})


def planted_pair(n: int = 200, n_latents: int = 200, planted: int = 7, seed: int = 0,
                 rate_a: float = 0.8, rate_b: float = 0.1, null_rate: float = 0.3
                 ) -> tuple[Embeddings, Embeddings]:
    """Two corpora of `n` documents: latent `planted` fires in `rate_a` of A and `rate_b` of B,
    every other latent in `null_rate` of both (drawn independently)."""
    rng = np.random.default_rng(seed)
    a = rng.random((n, n_latents)) < null_rate
    b = rng.random((n, n_latents)) < null_rate
    a[:, planted] = rng.random(n) < rate_a
    b[:, planted] = rng.random(n) < rate_b
    return embeddings_of(a, prefix="a"), embeddings_of(b, prefix="b")
