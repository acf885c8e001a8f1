"""Detection scoring (Paulo et al. 2024, "Automatically Interpreting Millions of Features in
Large Language Models"; reference: EleutherAI/delphi, `delphi/scorers/classifier/detection.py`):
a language model reads the explanation and plain contexts, and says which contain the feature.
The activating contexts are the held-out quantile draws, the others the negatives (random or
hard); the score is the balanced accuracy of its answers (0.5 is chance)."""

from __future__ import annotations

from saelab.interpret.explain.classify import classify
from saelab.interpret.explain.clients import Client
from saelab.interpret.explain.examples import FeatureExamples

SYSTEM = (
    "You check an explanation of a language-model feature against texts. The explanation says "
    "what the feature responds to. For each text, answer 1 if the text contains what the "
    "explanation describes, so that the feature would be active somewhere in it, or 0 if not. "
    "Reply with the list of numbers only.")


class Detection:
    """Whether the explanation lets a model tell activating contexts from negatives."""

    name = "detection"

    def __init__(self, client: Client, per_prompt: int = 5, seed: int = 0):
        self.client, self.per_prompt, self.seed = client, per_prompt, seed

    def score(self, explanation: str, examples: FeatureExamples) -> float:
        samples = examples.test + examples.negatives
        return classify(self.client, SYSTEM, explanation, [e.text for e in samples],
                        [True] * len(examples.test) + [False] * len(examples.negatives),
                        self.per_prompt,
                        self.seed + examples.feature).score
