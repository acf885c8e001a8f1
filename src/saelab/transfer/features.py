"""Which features transfer: each latent of a source dictionary beside its transfer, on the same
texts read by both models.

Chen et al. 2025 (section 5) compare a feature on the small model with its transfer on the large
one and find that semantic features (about a topic or a word's meaning) transfer differently
from structural ones (punctuation, formatting, position). saelab measures, per latent, the
Pearson correlation over aligned positions between its code on the source model's stream and the
transferred latent's code on the target model's stream (`agreement`), and sorts latents into
"structural" (most of their top tokens hold no letter: punctuation, digits, whitespace) and
"semantic" (the rest) by the tokens they fire most on (`kind_of`).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor


class Agreement(NamedTuple):
    """Per-latent comparison of a dictionary and its transfer on aligned rows."""

    correlation: Tensor
    """Pearson correlation of the two codes over the rows [n_latents] (NaN where a latent never
    fires on one side)."""
    frequency_source: Tensor
    """Fraction of rows on which the source latent fires [n_latents]."""
    frequency_target: Tensor
    """Fraction of rows on which the transferred latent fires [n_latents]."""
    top_rows: Tensor
    """Rows of the source latent's largest codes [n_latents, top] (for examples)."""


@torch.no_grad()
def agreement(source, transferred, x_source: Tensor, x_target: Tensor, top: int = 8,
              batch_size: int = 4096) -> Agreement:
    """Compare `source` on rows `x_source` with `transferred` on the aligned rows `x_target`."""
    n_latents = source.n_latents
    sums = {k: torch.zeros(n_latents, dtype=torch.float64)
            for k in ("a", "b", "aa", "bb", "ab", "fa", "fb")}
    best_v = torch.full((n_latents, top), -float("inf"))
    best_i = torch.zeros((n_latents, top), dtype=torch.long)
    for start in range(0, x_source.shape[0], batch_size):
        a = source.encode(x_source[start:start + batch_size].to(source.W_dec)).double()
        b = transferred.encode(x_target[start:start + batch_size].to(transferred.W_dec)).double()
        for key, value in (("a", a), ("b", b), ("aa", a * a), ("bb", b * b), ("ab", a * b),
                           ("fa", (a > 0).double()), ("fb", (b > 0).double())):
            sums[key] += value.sum(0)
        values = torch.cat([best_v, a.T.float()], dim=1)  # [n_latents, top + rows]
        rows = torch.arange(start, start + a.shape[0]).expand(n_latents, -1)
        index = torch.cat([best_i, rows], dim=1)
        best_v, pick = values.topk(top, dim=1)
        best_i = index.gather(1, pick)
    n = max(1, x_source.shape[0])
    cov = sums["ab"] / n - sums["a"] / n * sums["b"] / n
    var_a = sums["aa"] / n - (sums["a"] / n) ** 2
    var_b = sums["bb"] / n - (sums["b"] / n) ** 2
    corr = cov / (var_a * var_b).sqrt()
    corr[(var_a <= 1e-12) | (var_b <= 1e-12)] = float("nan")
    return Agreement(corr.float(), (sums["fa"] / n).float(), (sums["fb"] / n).float(), best_i)


def is_structural(token: str) -> bool:
    """A token without any letter (punctuation, digits, whitespace, byte pieces)."""
    return not any(ch.isalpha() for ch in token)


def kind_of(tokens: list[str]) -> str:
    """"structural" when most of a latent's top tokens hold no letter, else "semantic"."""
    structural = sum(is_structural(t) for t in tokens)
    return "structural" if structural * 2 > len(tokens) else "semantic"
