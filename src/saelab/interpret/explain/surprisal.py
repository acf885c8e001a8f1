"""Surprisal scoring (Paulo et al. 2024, "Automatically Interpreting Millions of Features in
Large Language Models"; reference: EleutherAI/delphi, `delphi/scorers/surprisal/surprisal.py`):
a causal LM reads each context after a prompt that holds the explanation, and after one that
holds a description that says nothing ("various unrelated texts"); a good explanation lowers the
loss of the activating contexts more than that of the negatives. The score is the AUROC of the
loss drop (mean per token, nats) for activating contexts against the negatives (0.5 is chance).
"""

from __future__ import annotations

import math

from saelab.interpret.explain.embedding import auroc
from saelab.interpret.explain.examples import FeatureExamples
from saelab.interpret.explain.scoring_lm import continuation_logprobs

TEMPLATE = ("The following describes a feature of text, then gives a text that shows it.\n"
            "Description: {}\nText:")
NEUTRAL = "Various unrelated texts."
"""The description that says nothing, the baseline the explanation is compared with."""


class Surprisal:
    """How much more the explanation lowers the loss of activating contexts than of negatives."""

    name = "surprisal"

    def __init__(self, model, tokenizer):
        self.model, self.tokenizer = model, tokenizer

    def score(self, explanation: str, examples: FeatureExamples) -> float:
        if not examples.test or not examples.negatives:
            return math.nan
        texts = [" " + e.text.strip() for e in examples.test + examples.negatives]
        told = continuation_logprobs(self.model, self.tokenizer,
                                     [TEMPLATE.format(explanation)] * len(texts), texts)
        untold = continuation_logprobs(self.model, self.tokenizer,
                                       [TEMPLATE.format(NEUTRAL)] * len(texts), texts)
        drop = [a - b for a, b in zip(told, untold)]  # log p rises = loss drops
        return auroc(drop, [True] * len(examples.test) + [False] * len(examples.negatives))
