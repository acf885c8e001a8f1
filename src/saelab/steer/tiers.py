"""Tiers of steering aggressiveness, after Goyal et al. 2025, "Breaking Bad Tokens:
Detoxification of LLMs Using Sparse Autoencoders" (arXiv 2505.14536; the authors' code is at
github.com/CrowdDynamicsLab/SAE-Detoxification, which could not be read here: the tiers follow the
paper's description). From least to most aggressive:

- `active`: add `strength` to the feature's code only on tokens where it already fires;
- `every`: add `strength` on every token;
- `clamp`: set the code to `clamp_value` on every token.

A negative strength (or a clamp to 0) suppresses a concept, a positive one induces it. Each tier
is reported with the concept as the clean model reads the continuation (the feature's mean
activation, and a probe's score when one is given) next to its fluency cost, the perplexity of
the steered continuation under the clean model. The paper scores toxicity with an external
classifier; here the probe is any callable on texts (`EmbeddingProbe` fits one on MiniLM
embeddings), so the concept need not be toxicity.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import NamedTuple

from saelab.errors import ConfigError
from saelab.steer.edits import CodeEdit, add, clamp
from saelab.steer.generate import Generation, generate

TIERS = ("active", "every", "clamp")
"""The tiers, least aggressive first."""

Probe = Callable[[Sequence[str]], Sequence[float]]
"""Texts -> a concept score per text (e.g. a probability)."""


def tier_edit(tier: str, feature: int, strength: float, clamp_value: float = 0.0) -> CodeEdit:
    """The edit of one tier."""
    if tier == "active":
        return add(feature, strength, where="active")
    if tier == "every":
        return add(feature, strength)
    if tier == "clamp":
        return clamp(feature, clamp_value)
    raise ConfigError(f"unknown tier {tier!r}; tiers: {', '.join(TIERS)}")


class TierResult(NamedTuple):
    """One tier (or the clean model) over the prompts."""

    tier: str
    """"clean" or a tier name."""
    activation: float
    """The feature's mean activation on the continuations (clean model's reading)."""
    probe: float
    """The probe's mean score on the continuations (NaN without a probe)."""
    perplexity: float
    """Geometric mean over prompts of the continuation's perplexity under the clean model."""
    activation_reduction: float
    """Clean activation minus this one (positive: the concept was reduced)."""
    probe_reduction: float
    """Clean probe score minus this one (NaN without a probe)."""
    texts: list[str]
    """The continuations, one per prompt."""


def _summary(tier: str, gens: list[Generation], probe: Probe | None,
             clean: "TierResult | None") -> TierResult:
    texts = [g.text for g in gens]
    activation = sum(g.mean_activation for g in gens) / len(gens)
    score = sum(probe(texts)) / len(texts) if probe is not None else math.nan
    logs = [math.log(g.perplexity) for g in gens if g.perplexity > 0 and math.isfinite(
        g.perplexity)]
    ppl = math.exp(sum(logs) / len(logs)) if logs else math.nan
    base_a, base_p = (clean.activation, clean.probe) if clean else (activation, score)
    return TierResult(tier, activation, score, ppl, base_a - activation, base_p - score, texts)


def compare_tiers(model, dictionary, feature: int, prompts: Sequence[str], strength: float,
                  clamp_value: float = 0.0, probe: Probe | None = None,
                  tiers: Sequence[str] = TIERS, max_new_tokens: int = 32,
                  hookpoint: str | None = None, tokenizer=None) -> list[TierResult]:
    """The clean model, then each tier, over `prompts`: concept (activation, probe) and
    fluency (perplexity under the clean model) of the greedy continuations."""
    if not prompts:
        raise ConfigError("compare_tiers needs at least one prompt")

    def run(edits: Sequence[CodeEdit]) -> list[Generation]:
        return [generate(model, dictionary, p, edits, feature, max_new_tokens, hookpoint,
                         tokenizer) for p in prompts]

    clean = _summary("clean", run(()), probe, None)
    rows = [clean]
    for tier in tiers:
        rows.append(_summary(tier, run([tier_edit(tier, feature, strength, clamp_value)]),
                             probe, clean))
    return rows
