"""A concept probe on text: a logistic regression on sentence embeddings (the packaged MiniLM),
fitted on texts that carry the concept against texts that do not. It scores a continuation
independently of the dictionary being steered, as the toxicity classifier of "Breaking Bad
Tokens" (Goyal et al. 2025) does for toxicity.
"""

from __future__ import annotations

from collections.abc import Sequence

from saelab.errors import DataError
from saelab.interpret.explain.embedding import Encoder


class EmbeddingProbe:
    """P(concept | text) from a logistic regression on the text's sentence embedding."""

    def __init__(self, encoder: Encoder, classifier):
        self.encoder, self.classifier = encoder, classifier

    @classmethod
    def fit(cls, positives: Sequence[str], negatives: Sequence[str],
            encoder: Encoder | None = None, C: float = 1.0) -> "EmbeddingProbe":
        """Fit on `positives` (texts with the concept) and `negatives` (without)."""
        if len(positives) < 2 or len(negatives) < 2:
            raise DataError(f"a probe needs at least 2 texts on each side, got "
                            f"{len(positives)} with the concept and {len(negatives)} without")
        from sklearn.linear_model import LogisticRegression

        encoder = encoder or Encoder.load()
        x = encoder(list(positives) + list(negatives)).numpy()
        y = [1] * len(positives) + [0] * len(negatives)
        return cls(encoder, LogisticRegression(C=C, max_iter=1000).fit(x, y))

    def __call__(self, texts: Sequence[str]) -> list[float]:
        """P(concept) of each text."""
        if not texts:
            return []
        return self.classifier.predict_proba(self.encoder(list(texts)).numpy())[:, 1].tolist()
