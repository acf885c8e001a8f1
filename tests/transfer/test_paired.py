"""Aligned activations of two models with different tokenizers: each pair is the two models'
activations at the same text prefix, and bad input is refused by name."""

from __future__ import annotations

import pytest
import torch

from saelab.capture import Capture
from saelab.errors import ConfigError, DataError
from saelab.transfer import paired_activations
from tests.transfer.conftest import TEXTS

HP_A, HP_B = "model.layers.1", "model.layers.2"


def test_pairs_are_each_models_activation_at_the_same_text_prefix(two_models) -> None:
    a, b = two_models
    pairs = paired_activations(a, HP_A, b, HP_B, TEXTS[:8], norm_factor=None, batch_size=3)
    c = pairs.counts
    assert pairs.x_a.shape == (c["kept"], 32) and pairs.x_b.shape == (c["kept"], 48)
    assert 0 < c["kept"] <= c["aligned"] <= min(c["tokens_a"], c["tokens_b"])
    # the first kept row of document 0, recomputed from the prefix alone in each model
    text = TEXTS[0]
    ids_a = a.tokenizer(text, return_offsets_mapping=True)
    row = int((pairs.ids_a[0] == torch.tensor(ids_a["input_ids"])).nonzero()[0])
    end = ids_a["offset_mapping"][row][1]
    for lm, hp, x in ((a, HP_A, pairs.x_a[0]), (b, HP_B, pairs.x_b[0])):
        prefix = lm.tokenizer(text[:end], return_tensors="pt", add_special_tokens=True)
        ids = prefix["input_ids"]
        if lm.tokenizer.sep_token_id is not None:  # WordPiece appends [SEP]: read before it
            ids = ids[:, :-1]
        with Capture(lm.model, [hp]) as cap:
            want = cap.run(input_ids=ids)[hp][0, -1]
        assert torch.allclose(x, want, atol=1e-4)


def test_a_hookpoint_the_model_lacks_is_named(two_models) -> None:
    a, b = two_models
    with pytest.raises(ConfigError, match="model.layers.7"):
        paired_activations(a, HP_A, b, "model.layers.7", TEXTS[:2])


def test_too_few_aligned_positions_are_refused_with_the_counts(two_models) -> None:
    a, b = two_models
    with pytest.raises(DataError, match="only .* positions .* align"):
        paired_activations(a, HP_A, b, HP_B, ["Hello there.", "Yes."])
