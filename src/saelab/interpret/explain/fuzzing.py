"""Fuzzing scoring (Paulo et al. 2024, "Automatically Interpreting Millions of Features in Large
Language Models"; reference: EleutherAI/delphi, `delphi/scorers/classifier/fuzz.py` and
`sample.py`): contexts come with tokens marked `<<...>>`, and a language model says whether the
marks sit where the explanation says the feature fires. Correctly marked: the held-out activating
contexts with their active tokens marked; wrongly marked: the negatives with as many tokens
marked at random as an activating context has on average. The score is the balanced accuracy
(0.5 is chance)."""

from __future__ import annotations

import math
import random

from saelab.interpret.explain.classify import classify
from saelab.interpret.explain.clients import Client
from saelab.interpret.explain.examples import Example, FeatureExamples
from saelab.interpret.explain.explainer import THRESHOLD, highlight

SYSTEM = (
    "You check an explanation of a language-model feature against texts in which some tokens "
    "are marked like <<this>>. The explanation says what the feature responds to. For each "
    "text, answer 1 if the marked tokens are ones the explanation describes, or 0 if they are "
    "marked wrongly. Reply with the list of numbers only.")


def n_marked(example: Example) -> int:
    """Tokens above the marking threshold in an activating example."""
    top = max(example.activations, default=0.0)
    return sum(a > THRESHOLD * top for a in example.activations) if top > 0 else 0


def mark_at_random(example: Example, n: int, rng: random.Random) -> str:
    """The example with `n` of its tokens, chosen at random, marked."""
    chosen = set(rng.sample(range(len(example.tokens)), min(n, len(example.tokens))))
    fake = [1.0 if i in chosen else 0.0 for i in range(len(example.tokens))]
    return highlight(example._replace(activations=fake))


class Fuzzing:
    """Whether the explanation lets a model tell correctly marked tokens from random marks."""

    name = "fuzzing"

    def __init__(self, client: Client, per_prompt: int = 5, seed: int = 0):
        self.client, self.per_prompt, self.seed = client, per_prompt, seed

    def score(self, explanation: str, examples: FeatureExamples) -> float:
        if not examples.test:
            return math.nan
        rng = random.Random(self.seed + examples.feature)
        n = max(1, math.ceil(sum(map(n_marked, examples.test)) / len(examples.test)))
        texts = [highlight(e) for e in examples.test]
        texts += [mark_at_random(e, n, rng) for e in examples.negatives]
        labels = [True] * len(examples.test) + [False] * len(examples.negatives)
        return classify(self.client, SYSTEM, explanation, texts, labels, self.per_prompt,
                        self.seed + examples.feature).score
