"""Embedding scoring (Paulo et al. 2024, "Automatically Interpreting Millions of Features in
Large Language Models"; reference: EleutherAI/delphi, `delphi/scorers/embedding/embedding.py`):
the explanation is a query, the contexts are documents, and a sentence encoder ranks them by
cosine similarity; the score is the AUROC of that ranking for activating contexts against the
negatives (0.5 is chance, 1 is every activating context above every negative).

The encoder is the packaged all-MiniLM-L6-v2 (`saelab.models.load("minilm-l6")`), embedded as
sentence-transformers does for it: mean of the last hidden states over the tokens, then
normalised. (delphi prefixes the query with an instruction for its own, instruction-tuned
encoder; MiniLM takes the explanation as it is.)
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from saelab.interpret.explain.examples import FeatureExamples

ENCODER = "minilm-l6"
"""Packaged alias of the default sentence encoder."""


def auroc(scores: Sequence[float], labels: Sequence[bool]) -> float:
    """Area under the ROC curve of `scores` for `labels` (NaN without both classes)."""
    if len(set(labels)) < 2:
        return math.nan
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score([int(y) for y in labels], list(scores)))


class Encoder:
    """A sentence encoder: texts -> unit vectors [N, d]."""

    def __init__(self, model, tokenizer, batch_size: int = 64):
        self.model, self.tokenizer, self.batch_size = model, tokenizer, batch_size

    @classmethod
    def load(cls, name: str = ENCODER) -> "Encoder":
        from saelab.models import load

        lm = load(name)
        return cls(lm.model, lm.tokenizer)

    @torch.no_grad()
    def __call__(self, texts: Sequence[str]) -> Tensor:
        out = []
        for start in range(0, len(texts), self.batch_size):
            batch = self.tokenizer(list(texts[start:start + self.batch_size]), padding=True,
                                   truncation=True, max_length=256, return_tensors="pt")
            hidden_BTD = self.model(**batch).last_hidden_state
            mask_BT1 = batch["attention_mask"].unsqueeze(-1).to(hidden_BTD.dtype)
            mean_BD = (hidden_BTD * mask_BT1).sum(1) / mask_BT1.sum(1).clamp_min(1)
            out.append(torch.nn.functional.normalize(mean_BD.float(), dim=-1))
        return torch.cat(out) if out else torch.zeros(0, 1)


class Embedding:
    """How well the explanation, as a query, ranks activating contexts above negatives."""

    name = "embedding"

    def __init__(self, encoder: Encoder):
        self.encoder = encoder

    def score(self, explanation: str, examples: FeatureExamples) -> float:
        samples = examples.test + examples.negatives
        if not examples.test or not examples.negatives:
            return math.nan
        vectors = self.encoder([explanation] + [e.text for e in samples])
        similarity = (vectors[1:] @ vectors[0]).tolist()
        return auroc(similarity, [True] * len(examples.test) + [False] * len(examples.negatives))
