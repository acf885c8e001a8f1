"""Tests and corrections shared by the diff and the co-occurrence analysis."""

from __future__ import annotations

from typing import Literal

import numpy as np
from scipy import stats

Correction = Literal["bh", "by", "bonferroni"]
CORRECTIONS = ("bh", "by", "bonferroni")
"""Multiple-comparison corrections: Benjamini-Hochberg and Benjamini-Yekutieli (false discovery
rate, scipy.stats.false_discovery_control), Bonferroni (family-wise error)."""


def adjust(p_values: np.ndarray, method: Correction = "bh", n_tests: int | None = None
           ) -> np.ndarray:
    """`p_values` adjusted for `n_tests` comparisons (default: as many as p-values; more when
    the untested ones count, as p-values of 1). Bonferroni multiplies by the count; BH and BY
    are scipy's `false_discovery_control` on the p-values padded with ones."""
    p = np.asarray(p_values, dtype=np.float64)
    m = len(p) if n_tests is None else int(n_tests)
    if m < len(p):
        raise ValueError(f"n_tests ({m}) is fewer than the p-values given ({len(p)})")
    if method not in CORRECTIONS:
        raise ValueError(f"unknown correction {method!r}; one of {', '.join(CORRECTIONS)}")
    if not len(p):
        return p
    if method == "bonferroni":
        return np.minimum(p * m, 1.0)
    padded = np.concatenate([p, np.ones(m - len(p))])
    return stats.false_discovery_control(padded, method=method)[:len(p)]


def fisher_p(count_a: np.ndarray, n_a: int, count_b: np.ndarray, n_b: int) -> np.ndarray:
    """Two-sided Fisher exact test of each pair of counts (present in count_a of n_a documents
    against count_b of n_b): the p-value that the two shares are equal. Pairs of counts repeat
    (many latents fire in every document), so each distinct pair is tested once."""
    cache: dict[tuple[int, int], float] = {}
    out = np.empty(len(count_a))
    for i, (a, b) in enumerate(zip(count_a.tolist(), count_b.tolist())):
        if (a, b) not in cache:
            cache[a, b] = stats.fisher_exact([[a, n_a - a], [b, n_b - b]]).pvalue
        out[i] = cache[a, b]
    return out


def smallest_fisher_p(n_a: int, n_b: int) -> float:
    """The smallest p-value the two-sided Fisher test can give for corpora of n_a and n_b
    documents (a latent in every document of one and none of the other)."""
    return float(stats.fisher_exact([[n_a, 0], [0, n_b]]).pvalue)


def cohens_h(p_a: np.ndarray, p_b: np.ndarray) -> np.ndarray:
    """Cohen's h, the effect size of a difference of two proportions: 2 asin sqrt(p_a) -
    2 asin sqrt(p_b) (0.2 small, 0.5 medium, 0.8 large)."""
    return 2 * np.arcsin(np.sqrt(p_a)) - 2 * np.arcsin(np.sqrt(p_b))


def log_odds_ratio(count_a: np.ndarray, n_a: int, count_b: np.ndarray, n_b: int) -> np.ndarray:
    """Natural log of the odds ratio of presence in a against b, with 0.5 added to each cell
    (Haldane-Anscombe) so that a latent absent from one side has a finite value."""
    a, b = count_a + 0.5, count_b + 0.5
    return np.log(a / (n_a - count_a + 0.5)) - np.log(b / (n_b - count_b + 0.5))
