"""Autointerp: how well natural-language explanations of a dictionary's features predict them.

After Paulo et al. 2024, "Automatically Interpreting Millions of Features in Large Language
Models" (reference: EleutherAI/delphi). The explaining and scoring live in
`saelab.interpret.explain`; this family reports them with the other metrics, in one of two ways.

- From a finished `saelab explain` run: set `Autointerp.config = AutointerpConfig(explanations=
  "runs/x/explain/explanations.jsonl")`; each scorer's figure is its mean over the features in
  the file (no model runs).
- Otherwise it runs on the evaluation's own tokens: the model runs once on them, the
  `n_features` features drawn at random among those that fire in at least 15 contexts and stay
  silent in at least 10 (so that each has examples, test examples and negatives) get their contexts, an
  explanation and the `scorers` (default: embedding, with the packaged MiniLM).
  The explanation comes from `explainer` (a local causal LM, e.g. "smollm2-135m") when given;
  without one it is the token baseline, the feature's most frequent activating tokens as a
  sentence, so the figures then say how far the tokens alone predict where a feature fires.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from typing import ClassVar

import torch

from saelab.errors import ConfigError
from saelab.evaluate._base import Family
from saelab.evaluate._contexts import context_activations
from saelab.evaluate._registry import register
from saelab.interpret.explain import SCORERS, Resources, Sampling, Text, build, examples_for
from saelab.interpret.explain.examples import FeatureExamples

N_TOP = 5
"""Top-activating contexts the explainer reads."""
N_NEGATIVES = 10
"""Contexts where a chosen feature never fires, kept as the scorers' negatives (at least)."""
MIN_CONTEXTS = N_TOP + 2 * Sampling.n_quantiles
"""A feature is chosen only if it fires in at least this many of the evaluation's contexts:
the top ones, and two in each activation quantile (one for the explainer, one to test)."""


@dataclass
class AutointerpConfig:
    """Where explanations come from and which scorers run."""

    explanations: str | None = None
    """A `saelab explain` results file (explanations.jsonl) to report instead of running."""
    n_features: int = 8
    """Features explained and scored when running."""
    explainer: str | None = None
    """A local causal LM that writes the explanations; None: the token baseline."""
    scorers: tuple[str, ...] = ("embedding",)
    """Scorers run (any of saelab.interpret.explain.SCORERS)."""
    window: int = 24
    """Tokens per context."""


def token_explanation(examples: FeatureExamples, n: int = 3) -> str:
    """The token baseline: the feature's most frequent activating tokens, as a sentence."""
    counts: Counter[str] = Counter()
    for e in examples.explain:
        top = max(e.activations, default=0.0)
        counts.update(p.strip() for p, a in zip(e.str_tokens, e.activations)
                      if top > 0 and a > 0.3 * top and p.strip())
    words = [w for w, _ in counts.most_common(n)]
    return "The tokens " + ", ".join(f'"{w}"' for w in words) + "." if words else "Nothing."


@register("autointerp")
class Autointerp(Family):
    """Mean scores of the explanations of a dictionary's features: read from a `saelab explain`
    results file, or produced on the evaluation's tokens (a local explainer, or the token
    baseline; embedding scoring by default).

    - `n_features`: features explained (with at least one score);
    - `detection`, `fuzzing`, `embedding`, `surprisal`, `intervention`: each scorer's mean over
      those features (balanced accuracy, AUROC or nats per token; see
      saelab.interpret.explain.scorers); NaN for a scorer that did not run (conditional).
    """

    needs = frozenset({"model", "tokens"})
    figures = ("n_features",) + SCORERS
    headline = ("n_features", "embedding", "detection")
    conditional = SCORERS
    config: ClassVar[AutointerpConfig] = AutointerpConfig()
    """Where the explanations come from (replace with another AutointerpConfig)."""

    @classmethod
    def check(cls, context) -> None:
        unknown = [s for s in cls.config.scorers if s not in SCORERS]
        if unknown:
            raise ConfigError(f"autointerp: unknown scorers {unknown}; known: "
                              f"{', '.join(SCORERS)}")
        if cls.config.explanations is None and context.hookpoint is None:
            raise ConfigError("autointerp: the hookpoint the dictionary reads is needed")

    def run(self) -> dict[str, float]:
        if self.config.explanations is not None:
            from saelab.interpret.explain import read_results

            return self.figures_of(list(read_results(self.config.explanations).values()))
        return self.figures_of(self.explain_here())

    def figures_of(self, records: list[dict]) -> dict[str, float]:
        """Each scorer's mean over `records` (NaN where none has it)."""
        out: dict[str, float] = {"n_features": float(sum(
            any(v is not None for v in r.get("scores", {}).values()) for r in records))}
        for name in SCORERS:
            values = [r["scores"][name] for r in records
                      if r.get("scores", {}).get(name) is not None]
            out[name] = float(sum(values) / len(values)) if values else math.nan
        return out

    @torch.no_grad()
    def explain_here(self) -> list[dict]:
        """Explain and score the most active features on the evaluation's tokens."""
        ctx = self.context
        tokenizer = self.tokenizer()
        rows, ctx_ids, pos_ids = [], [], []
        for batch in context_activations(ctx.model, ctx.tokens, ctx.hookpoint, ctx.exclusion,
                                         desc="autointerp"):
            where = batch.keep.nonzero().cpu()  # [R, 2]: (context in batch, position)
            rows.append(batch.acts[batch.keep].cpu())
            ctx_ids.append(where[:, 0] + batch.first)
            pos_ids.append(where[:, 1])
        acts = torch.cat(rows)
        ids = torch.arange(acts.shape[0])
        batches = list(zip(acts.split(4096), ids.split(4096)))
        row_context = torch.cat(ctx_ids)
        features = self.choose(batches, row_context, ctx.tokens.shape[0])
        text = Text(ctx.tokens.cpu(), row_context, torch.cat(pos_ids), tokenizer)
        sampling = Sampling(window=self.config.window, n_top=N_TOP, n_test_per_quantile=2,
                            n_negatives=N_NEGATIVES, seed=ctx.seed or 0)
        client = None
        if self.config.explainer:
            from saelab.interpret.explain import LocalClient

            client = LocalClient.load(self.config.explainer)
        scorers = build(self.config.scorers, Resources(
            judge=client, scoring_lm=client, seed=ctx.seed or 0,
            subject=(ctx.model, tokenizer, ctx.hookpoint, ctx.dictionary)))
        records = []
        for ex in examples_for(ctx.dictionary, batches, text, features, sampling):
            if client is not None:
                from saelab.interpret.explain import explain

                explanation = explain(client, ex.explain).text
            else:
                explanation = token_explanation(ex)
            scores = {s.name: s.score(explanation, ex) for s in scorers}
            records.append({"feature": ex.feature, "explanation": explanation, "scores": {
                k: (v if math.isfinite(v) else None) for k, v in scores.items()}})
        return records

    def choose(self, batches, row_context: torch.Tensor, n_contexts: int) -> list[int]:
        """`n_features` features drawn at random (seeded) among those a score can be computed
        for: firing in at least MIN_CONTEXTS contexts (the explainer's and the test examples)
        and silent in at least N_NEGATIVES (the negatives). The most frequent features fire in
        every context of a short evaluation, so there would be no negative to score them on."""
        n = self.context.dictionary.n_latents
        pairs = []  # (context, feature) pairs that fire, as one key each, kept sparse
        for x, ids in batches:
            r, f = (self.context.dictionary.encode(x) > 0).cpu().nonzero(as_tuple=True)
            pairs.append(torch.unique(row_context[ids[r]] * n + f))
        keys = torch.unique(torch.cat(pairs)) if pairs else torch.zeros(0, dtype=torch.long)
        in_contexts = torch.bincount(keys % n, minlength=n)
        eligible = ((in_contexts >= MIN_CONTEXTS)
                    & (n_contexts - in_contexts >= N_NEGATIVES)).nonzero()[:, 0]
        g = torch.Generator().manual_seed(self.context.seed or 0)
        chosen = eligible[torch.randperm(len(eligible), generator=g)[:self.config.n_features]]
        return sorted(int(f) for f in chosen)

    def tokenizer(self):
        """The model's tokenizer: its `tokenizer` attribute, else loaded from its folder."""
        model = self.context.model
        found = getattr(model, "tokenizer", None)
        if found is not None:
            return found
        source = getattr(getattr(model, "config", None), "_name_or_path", None)
        if not source:
            raise ConfigError("autointerp: the model carries no tokenizer and no folder to "
                              "load one from")
        from saelab.models import load_tokenizer

        return load_tokenizer(source)
