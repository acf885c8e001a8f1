"""Dataset diffing: the latents whose document frequency differs most between two corpora.

    >>> result = diff(emb_wiki, emb_bible, top=10)
    >>> print(format_diff(result))

Jiang et al. 2025 ("Interpretable Embeddings with Sparse Autoencoders: A Data Analysis
Toolkit"; reference `diff_features` in interp_embed's examples/functions.py) binarise the
max-pooled embeddings (a latent is present in a document when its code is above 0), take each
latent's frequency in either dataset and rank latents by the difference, then have an LLM label
the top ones. saelab keeps that ranking and adds what a reader needs to trust it: effect sizes
(Cohen's h, the log odds ratio), a two-sided Fisher exact test per latent with a correction for
the number of latents tested (Benjamini-Hochberg by default), and example texts from each side
with the token where the latent peaked marked, in place of the LLM's label. Corpora too small for
any latent to pass the corrected test are refused before anything is ranked.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import NamedTuple

import numpy as np

from saelab._paths import write_json
from saelab.analyse.embeddings import Embeddings
from saelab.analyse.stats import (CORRECTIONS, Correction, adjust, cohens_h, fisher_p,
                                  log_odds_ratio, smallest_fisher_p)
from saelab.errors import ConfigError, DataError

ALPHA = 0.05
"""Default of every `alpha`: the corrected significance level."""
COMPARED = ("dictionary", "hookpoint", "pooling", "max_tokens")
"""Settings both embeddings must share to be compared."""


class FeatureDiff(NamedTuple):
    """One latent's document frequency in two corpora."""

    latent: int
    """The latent's index in the dictionary."""
    count_a: int
    """Documents of corpus A in which it fired."""
    count_b: int
    """Documents of corpus B in which it fired."""
    freq_a: float
    """Share of corpus A's documents in which it fired."""
    freq_b: float
    """Share of corpus B's documents in which it fired."""
    difference: float
    """freq_a - freq_b (the paper's ranking)."""
    cohens_h: float
    """Cohen's h of the two shares (effect size; |h| 0.2 small, 0.5 medium, 0.8 large)."""
    log_odds: float
    """Log odds ratio of firing in A against B (0.5 added to each cell)."""
    p_value: float
    """Two-sided Fisher exact test of equal shares."""
    q_value: float
    """The p-value corrected for the number of latents tested."""
    examples_a: list[str]
    """Excerpts of the corpus A documents where it peaked highest, the peak token «marked»."""
    examples_b: list[str]
    """The same for corpus B."""


@dataclass
class DiffResult:
    """The diff of two corpora: the top latents each way and the test's figures."""

    name_a: str
    """Corpus A's name."""
    name_b: str
    """Corpus B's name."""
    n_a: int
    """Documents of A."""
    n_b: int
    """Documents of B."""
    n_tested: int
    """Latents tested (those that fired in at least one document of either corpus)."""
    n_significant: int
    """Latents whose corrected p-value is below alpha, either way."""
    alpha: float
    """The corrected significance level."""
    correction: str
    """The correction used (bh, by, bonferroni)."""
    more_in_a: list[FeatureDiff] = field(default_factory=list)
    """Latents most more frequent in A than in B, largest difference first."""
    more_in_b: list[FeatureDiff] = field(default_factory=list)
    """Latents most more frequent in B than in A, largest difference first."""

    def to_json(self) -> dict:
        """The result as plain JSON data."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["more_in_a"] = [r._asdict() for r in self.more_in_a]
        out["more_in_b"] = [r._asdict() for r in self.more_in_b]
        return out

    def save(self, path: str | Path) -> Path:
        """Write the result as JSON (atomically)."""
        write_json(path, self.to_json())
        return Path(path)


def diff(a: Embeddings, b: Embeddings, *, top: int = 10, alpha: float = ALPHA,
         correction: Correction = "bh", threshold: float = 0.0, n_examples: int = 3,
         name_a: str = "A", name_b: str = "B") -> DiffResult:
    """The `top` latents more frequent in `a` than in `b` and the `top` the other way (ranked
    by frequency difference, significant ones first), with effect sizes, corrected p-values and
    `n_examples` excerpts from each side. A latent is present in a document when its pooled code
    is above `threshold`. A DataError says when the corpora are too small for any latent to
    reach `alpha` after the correction; a ConfigError when the embeddings were made with
    different dictionaries or settings."""
    if correction not in CORRECTIONS:
        raise ConfigError(f"unknown correction {correction!r}; one of {', '.join(CORRECTIONS)}")
    if not 0 < alpha < 1:
        raise ConfigError(f"alpha must lie between 0 and 1, got {alpha}")
    _check_comparable(a, b)
    n_a, n_b = len(a), len(b)
    count_a = np.asarray(a.active(threshold).sum(0)).ravel()
    count_b = np.asarray(b.active(threshold).sum(0)).ravel()
    tested = np.flatnonzero(count_a + count_b)
    _check_size(n_a, n_b, len(tested), alpha, correction, name_a, name_b)
    p = fisher_p(count_a[tested], n_a, count_b[tested], n_b)
    q = adjust(p, correction)
    freq_a, freq_b = count_a[tested] / n_a, count_b[tested] / n_b
    h = cohens_h(freq_a, freq_b)
    lor = log_odds_ratio(count_a[tested], n_a, count_b[tested], n_b)
    significant = q < alpha
    result = DiffResult(name_a, name_b, n_a, n_b, len(tested), int(significant.sum()), alpha,
                        correction)

    def row(j: int) -> FeatureDiff:
        latent = int(tested[j])
        return FeatureDiff(latent, int(count_a[latent]), int(count_b[latent]),
                           float(freq_a[j]), float(freq_b[j]), float(freq_a[j] - freq_b[j]),
                           float(h[j]), float(lor[j]), float(p[j]), float(q[j]),
                           _examples(a, latent, n_examples), _examples(b, latent, n_examples))

    difference = freq_a - freq_b
    for sign, into in ((1, result.more_in_a), (-1, result.more_in_b)):
        # significant first, then by the difference in this direction, then by effect size
        order = np.lexsort((-sign * h, -sign * difference, ~significant))
        into.extend(row(int(j)) for j in order[:top] if sign * difference[j] > 0)
    return result


def _check_comparable(a: Embeddings, b: Embeddings) -> None:
    if a.n_latents != b.n_latents:
        raise ConfigError(f"the embeddings have {a.n_latents} and {b.n_latents} latents: they "
                          f"come from different dictionaries")
    differ = [k for k in COMPARED if a.settings.get(k) != b.settings.get(k)]
    if differ:
        raise ConfigError("the two embeddings were made differently (" + ", ".join(
            f"{k}: {a.settings.get(k)!r} vs {b.settings.get(k)!r}" for k in differ)
            + "): embed both corpora with the same dictionary and options")


def _check_size(n_a: int, n_b: int, n_tested: int, alpha: float, correction: str,
                name_a: str, name_b: str) -> None:
    """Refuse corpora so small that even a latent in every document of one and none of the
    other could not pass the corrected test."""
    if n_a == 0 or n_b == 0 or n_tested == 0:
        raise DataError(f"nothing to compare: {name_a} has {n_a} documents, {name_b} has {n_b}, "
                        f"and {n_tested} latents fired in either")
    best = smallest_fisher_p(n_a, n_b)
    reachable = adjust(np.array([best]), correction, n_tests=n_tested)[0]
    if reachable >= alpha:
        need = next(n for n in range(2, 10_000) if adjust(
            np.array([smallest_fisher_p(n, n)]), correction, n_tests=n_tested)[0] < alpha)
        raise DataError(f"corpora too small for the test: with {n_a} documents in {name_a} and "
                        f"{n_b} in {name_b}, the smallest p-value Fisher's test can give is "
                        f"{best:.2g}, which after the {correction} correction for {n_tested} "
                        f"latents is {reachable:.2g}, not below alpha {alpha}. Give at least "
                        f"{need} documents on each side")


def _examples(emb: Embeddings, latent: int, n: int) -> list[str]:
    return [emb.excerpt(d, latent) for d in emb.top_documents(latent, n)]


def format_diff(result: DiffResult, examples: int = 1, width: int = 100) -> str:
    """The result as a text table for the terminal: each top latent with its shares, effect
    size, corrected p-value and `examples` excerpts from each side."""
    lines = [f"{result.name_a} ({result.n_a} documents) vs {result.name_b} ({result.n_b}): "
             f"{result.n_significant} of {result.n_tested} latents differ significantly "
             f"({result.correction}-corrected p < {result.alpha})"]
    for title, rows in ((f"more frequent in {result.name_a}", result.more_in_a),
                        (f"more frequent in {result.name_b}", result.more_in_b)):
        lines += ["", title, f"{'latent':>7} {result.name_a[:8]:>8} {result.name_b[:8]:>8} "
                             f"{'diff':>7} {'h':>6} {'q':>9}"]
        for r in rows:
            lines.append(f"{r.latent:>7} {r.freq_a:>8.1%} {r.freq_b:>8.1%} "
                         f"{r.difference:>+7.2f} {r.cohens_h:>+6.2f} {r.q_value:>9.2g}")
            for side, texts in ((result.name_a, r.examples_a), (result.name_b, r.examples_b)):
                for text in texts[:examples]:
                    lines.append(f"        {side[:10]:<10} {_clip(text, width)}")
    return "\n".join(lines)


def _clip(text: str, width: int) -> str:
    """`text` cut to about `width` characters, kept around its «marked» token."""
    if len(text) <= width:
        return text
    mark = max(0, text.find("«"))
    start = max(0, min(mark - width // 3, len(text) - width))
    return ("..." if start else "") + text[start:start + width] + "..."


def read_diff(path: str | Path) -> dict:
    """A diff result written by `DiffResult.save`, as a dict."""
    return json.loads(Path(path).read_text(encoding="utf-8"))
