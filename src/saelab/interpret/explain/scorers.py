"""The scorers by name, and what each one needs: a judge that answers (detection, fuzzing), the
sentence encoder (embedding), a local causal LM whose log-probabilities are read (surprisal), or
the model the dictionary was trained on, steered, and a local LM as judge (intervention).

Every scorer has a `name` and `score(explanation, examples) -> float`; higher is better: balanced
accuracy for detection and fuzzing, AUROC for embedding and surprisal (0.5 is chance for all
four), a log-probability rise in nats per token for intervention (0 is no information).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from saelab.errors import ConfigError
from saelab.interpret.explain.clients import Client, LocalClient
from saelab.interpret.explain.examples import FeatureExamples

SCORERS = ("detection", "fuzzing", "embedding", "surprisal", "intervention")
"""Every scorer's name."""
CHANCE = {"detection": 0.5, "fuzzing": 0.5, "embedding": 0.5, "surprisal": 0.5,
          "intervention": 0.0}
"""Each scorer's value for an explanation that carries no information."""
SCORING_LM = "smollm2-135m"
"""The local causal LM surprisal and intervention read when none is given."""


class Scorer(Protocol):
    """What every scorer offers."""

    name: str

    def score(self, explanation: str, examples: FeatureExamples) -> float:
        """How well `explanation` fits the feature `examples` show (see SCORERS)."""
        ...


@dataclass
class Resources:
    """What scorers may need; missing local models are loaded on first need."""

    judge: Client | None = None
    """The model that answers detection and fuzzing (usually the explainer)."""
    scoring_lm: LocalClient | None = None
    """A local causal LM for surprisal, and the judge of intervention."""
    subject: Any = None
    """For intervention: (model, tokenizer, hookpoint, dictionary) of the model steered."""
    encoder: Any = None
    """The sentence encoder of embedding (saelab.interpret.explain.embedding.Encoder)."""
    seed: int = 0
    """Seed of the scorers' shuffles."""

    def local_lm(self) -> LocalClient:
        """The scoring LM, loaded (SCORING_LM) if none was given."""
        if self.scoring_lm is None:
            self.scoring_lm = LocalClient.load(SCORING_LM)
        return self.scoring_lm


def build(names: Sequence[str], resources: Resources) -> list[Scorer]:
    """The scorers `names`, built on `resources` (refused, before any work, when unknown or when
    a scorer's need cannot be met)."""
    unknown = [n for n in names if n not in SCORERS]
    if unknown:
        raise ConfigError(f"unknown scorers {unknown}; known: {', '.join(SCORERS)}")
    out: list[Scorer] = []
    for name in dict.fromkeys(names):
        out.append(_build_one(name, resources))
    return out


def _build_one(name: str, r: Resources) -> Scorer:
    if name in ("detection", "fuzzing"):
        if r.judge is None:
            raise ConfigError(f"the {name} scorer needs a language model to answer: an explainer "
                              f"client")
        if name == "detection":
            from saelab.interpret.explain.detection import Detection

            return Detection(r.judge, seed=r.seed)
        from saelab.interpret.explain.fuzzing import Fuzzing

        return Fuzzing(r.judge, seed=r.seed)
    if name == "embedding":
        from saelab.interpret.explain.embedding import Embedding, Encoder

        if r.encoder is None:
            r.encoder = Encoder.load()
        return Embedding(r.encoder)
    if name == "surprisal":
        from saelab.interpret.explain.surprisal import Surprisal

        lm = r.local_lm()
        return Surprisal(lm.model, lm.tokenizer)
    from saelab.interpret.explain.intervention import Intervention

    if r.subject is None:
        raise ConfigError("the intervention scorer needs the model the dictionary reads, its "
                          "tokenizer and the hookpoint")
    model, tokenizer, hookpoint, dictionary = r.subject
    judge = r.local_lm()
    return Intervention(model, tokenizer, hookpoint, dictionary, judge.model, judge.tokenizer)
