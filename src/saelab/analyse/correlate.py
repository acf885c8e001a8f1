"""Concept correlations: pairs of latents that fire in the same documents more often than they
would if they were independent.

    >>> result = cooccurrences(emb, top=20)
    >>> for pair in result.pairs: print(pair.latent_a, pair.latent_b, pair.together, pair.expected)

Jiang et al. 2025 ("Interpretable Embeddings with Sparse Autoencoders: A Data Analysis
Toolkit"; reference `calculate_npmi` in interp_embed's examples/functions.py) score each pair of
binarised latents by normalised pointwise mutual information, NPMI = log(P(a,b) / P(a)P(b)) /
-log P(a,b), and read the top pairs. saelab ranks by the same NPMI, and reports beside it the
count a pair would have under independence (n_a n_b / N) and a one-sided hypergeometric test of
the observed count (Fisher's exact test for over-representation), corrected for every pair
considered, so that a pair of rare latents seen together twice is not mistaken for a finding.
Latents that fire in nearly every document are left out (`max_frequency`): they co-occur with
everything and say nothing. And a pair that peaks on the same token in most documents it shares
is one concept split over two latents (feature splitting), not two concepts that go together:
on the demo SAE and 500 Bible passages, each of the eight pairs of highest NPMI peaked on one
token in 82-100% of its shared documents, so such pairs are left out of the list by default
(`max_same_token`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple, Sequence

import numpy as np
from scipy import stats

from saelab.analyse.embeddings import Embeddings
from saelab.analyse.stats import Correction, adjust
from saelab.errors import ConfigError, DataError

MIN_TOGETHER = 5
"""Default of `min_together`: pairs seen together in fewer documents are not tested."""
MAX_LATENTS = 2000
"""Default of `max_latents`: the most frequent eligible latents kept (a dense N x L product)."""


class Pair(NamedTuple):
    """Two latents and how often they fire in the same documents."""

    latent_a: int
    """The first latent's index."""
    latent_b: int
    """The second latent's index."""
    together: int
    """Documents in which both fired."""
    expected: float
    """Documents in which both would fire if they were independent: n_a n_b / N."""
    count_a: int
    """Documents in which latent_a fired."""
    count_b: int
    """Documents in which latent_b fired."""
    npmi: float
    """Normalised pointwise mutual information (1: always together; 0: independent)."""
    p_value: float
    """One-sided hypergeometric test of at least `together` co-occurrences under independence."""
    q_value: float
    """The p-value corrected for every pair considered."""
    same_token: float
    """Share of the documents with both in which both peaked on the same token (near 1: one
    concept split over two latents rather than two concepts that go together)."""
    example: str
    """A document where both fired (its title), one where they peaked apart when there is."""


@dataclass
class Cooccurrences:
    """The pairs of latents that co-occur beyond chance in one corpus."""

    n_documents: int
    """Documents of the corpus."""
    n_latents: int
    """Latents considered (eligible by frequency)."""
    n_pairs: int
    """Pairs the correction counts (every pair of considered latents, or every pair with a
    chosen latent)."""
    n_significant: int
    """Pairs whose corrected p-value is below alpha."""
    alpha: float
    """The corrected significance level."""
    pairs: list[Pair] = field(default_factory=list)
    """The significant pairs with the highest NPMI, best first."""


def cooccurrences(emb: Embeddings, *, latents: Sequence[int] | None = None, top: int = 20,
                  min_together: int = MIN_TOGETHER, max_frequency: float = 0.5,
                  max_latents: int = MAX_LATENTS, alpha: float = 0.05,
                  correction: Correction = "bh", threshold: float = 0.0,
                  max_same_token: float | None = 0.5) -> Cooccurrences:
    """The `top` pairs of latents that co-occur beyond chance in `emb`'s documents, by NPMI.
    Latents firing in more than `max_frequency` of the documents are left out, and at most the
    `max_latents` most frequent of the rest are kept; with `latents`, only pairs with one of
    them are considered. Pairs that peak on the same token in more than `max_same_token` of
    their shared documents are one concept split over two latents and are left out of `pairs`
    (None keeps them; they still count as tests). A DataError says when no pair can be tested."""
    if not 0 < max_frequency <= 1:
        raise ConfigError(f"max_frequency must lie in (0, 1], got {max_frequency}")
    n = len(emb)
    active = emb.active(threshold).tocsc()
    counts = np.asarray(active.sum(0)).ravel()
    eligible = np.flatnonzero((counts >= min_together) & (counts <= max_frequency * n))
    eligible = np.sort(eligible[np.argsort(-counts[eligible], kind="stable")][:max_latents])
    chosen = _chosen(latents, emb.n_latents)
    if chosen is not None:
        eligible = np.union1d(eligible, chosen[counts[chosen] > 0])
    if len(eligible) < 2:
        raise DataError(f"no pair of latents to test: {len(eligible)} latents fire in at least "
                        f"{min_together} and at most {max_frequency:.0%} of the {n} documents; "
                        f"embed more documents or lower min_together")
    x_NL = active[:, eligible].toarray().astype(np.float32)
    together_LL = (x_NL.T @ x_NL).round().astype(np.int64)  # documents with both latents
    c = counts[eligible]
    i, j = np.triu_indices(len(eligible), k=1)
    if chosen is not None:  # only pairs with a chosen latent
        is_chosen = np.isin(eligible, chosen)
        keep = is_chosen[i] | is_chosen[j]
        i, j = i[keep], j[keep]
    n_pairs = len(i)
    k = together_LL[i, j]
    expected = c[i] * c[j] / n
    tested = (k >= min_together) & (k > expected)
    i, j, k, expected = i[tested], j[tested], k[tested], expected[tested]
    p = stats.hypergeom.sf(k - 1, n, c[i], c[j])
    q = adjust(p, correction, n_tests=n_pairs)
    npmi = _npmi(k, c[i], c[j], n)
    significant = q < alpha
    pairs = []
    for t in (int(t) for t in np.lexsort((-k, -npmi)) if significant[t]):
        a, b = int(eligible[i[t]]), int(eligible[j[t]])
        same, example = _same_token(emb, active, a, b)
        if max_same_token is None or same <= max_same_token:
            pairs.append(Pair(a, b, int(k[t]), float(expected[t]), int(c[i[t]]), int(c[j[t]]),
                              float(npmi[t]), float(p[t]), float(q[t]), same, example))
        if len(pairs) == top:
            break
    return Cooccurrences(n, len(eligible), n_pairs, int(significant.sum()), alpha, pairs)


def _chosen(latents: Sequence[int] | None, n_latents: int) -> np.ndarray | None:
    if latents is None:
        return None
    chosen = np.unique(np.asarray(list(latents), dtype=np.int64))
    bad = chosen[(chosen < 0) | (chosen >= n_latents)]
    if len(bad) or not len(chosen):
        raise ConfigError(f"latents must be indices in [0, {n_latents}); got {list(latents)}")
    return chosen


def _npmi(together: np.ndarray, count_a: np.ndarray, count_b: np.ndarray, n: int) -> np.ndarray:
    """NPMI of each pair from counts: log(P(a,b) / P(a)P(b)) / -log P(a,b), 1 when P(a,b) = 1."""
    p_ab = together / n
    pmi = np.log(p_ab / ((count_a / n) * (count_b / n)))
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(p_ab >= 1, 1.0, pmi / -np.log(p_ab))


def _same_token(emb: Embeddings, active, a: int, b: int) -> tuple[float, str]:
    """(share of the documents with both latents where they peak on the same token, the title
    of a document with both, one where they peak apart if any)."""
    both = np.flatnonzero(active[:, a].toarray().ravel() & active[:, b].toarray().ravel())
    same = [emb.entry(int(d), a)[1] == emb.entry(int(d), b)[1] for d in both]
    apart = [int(d) for d, s in zip(both, same) if not s]
    example = emb.documents[apart[0] if apart else int(both[0])].title if len(both) else ""
    return (float(np.mean(same)) if same else 0.0), example


def format_cooccurrences(result: Cooccurrences) -> str:
    """The result as a text table."""
    lines = [f"{result.n_significant} of {result.n_pairs} pairs of {result.n_latents} latents "
             f"co-occur beyond chance in {result.n_documents} documents "
             f"(corrected p < {result.alpha})",
             f"{'a':>6} {'b':>6} {'together':>8} {'expected':>8} {'npmi':>6} {'q':>9} "
             f"{'same':>5}  example"]
    lines += [f"{p.latent_a:>6} {p.latent_b:>6} {p.together:>8} {p.expected:>8.1f} "
              f"{p.npmi:>6.2f} {p.q_value:>9.2g} {p.same_token:>5.0%}  {p.example}"
              for p in result.pairs]
    return "\n".join(lines)
