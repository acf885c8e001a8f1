"""The embedding probe (packaged MiniLM) scores texts with the concept above texts without."""

from __future__ import annotations

import pytest

from saelab.errors import DataError
from saelab.steer import EmbeddingProbe

SEA = ["The waves crashed against the rocks of the harbour.", "Sailors steered the ship "
       "through the storm at sea.", "Fishing boats returned to port with the tide.",
       "The ocean was calm and the gulls circled the boat."]
MONEY = ["The bank raised its interest rates again this quarter.", "Shares fell sharply after "
         "the company's earnings report.", "Investors moved their savings into bonds.",
         "The central bank's inflation target was missed."]


def test_the_probe_scores_unseen_texts_with_the_concept_higher() -> None:
    probe = EmbeddingProbe.fit(SEA, MONEY)
    sea, money = probe(["A lighthouse guided the fishermen home across the bay.",
                        "The stock market closed higher on strong profits."])
    assert sea > 0.5 > money
    assert probe([]) == []


def test_a_probe_needs_texts_on_both_sides() -> None:
    with pytest.raises(DataError, match="at least 2 texts on each side"):
        EmbeddingProbe.fit(SEA, MONEY[:1])
