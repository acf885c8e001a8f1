"""Segment pooling: sentence spans, token ranges from offsets, and pooled rows that are the mean
(or max) of exactly their segment's token rows, for any segmentation."""

from __future__ import annotations

import pytest
import torch

from saelab.capture.pooling import (decoded_offsets, pool_segments, sentence_spans,
                                    token_ranges)
from saelab.errors import ConfigError, DataError

TEXT = "First add 3.5 and 2. Wait, let me check!\nSo the answer is 5.5.  Done"


def test_sentences_end_at_punctuation_and_line_breaks_but_not_inside_numbers() -> None:
    spans = sentence_spans(TEXT)
    assert [TEXT[a:b] for a, b in spans] == [
        "First add 3.5 and 2.", "Wait, let me check!", "So the answer is 5.5.", "Done"]


def test_sentence_spans_of_blank_text_are_empty() -> None:
    assert sentence_spans("  \n\n ") == []


def test_a_token_belongs_to_every_segment_it_overlaps_and_special_tokens_to_none() -> None:
    # tokens: [special], "Hi", "." , " Wait", ",", " ok", "." (character offsets)
    offsets = [(0, 0), (0, 2), (2, 3), (3, 8), (8, 9), (9, 12), (12, 13)]
    text = "Hi. Wait, ok."
    ranges = token_ranges(offsets, sentence_spans(text))
    assert ranges == [(1, 3), (3, 7)]
    assert token_ranges(offsets, [(0, len(text))]) == [(1, 7)]  # a document: every real token
    assert token_ranges(offsets, [(20, 25)]) == [(0, 0)]  # past the text: no token


def test_mean_pooled_row_equals_the_mean_of_exactly_its_segments_rows() -> None:
    acts_TD = torch.randn(10, 6)
    ranges = [(0, 3), (3, 4), (4, 10), (2, 7)]  # overlapping segments are allowed
    pooled = pool_segments(acts_TD, ranges)
    for row, (a, b) in zip(pooled, ranges):
        torch.testing.assert_close(row, acts_TD[a:b].mean(0))
    # changing a row outside a segment leaves that segment's pooled row unchanged
    moved = acts_TD.clone()
    moved[3] += 100.0
    assert torch.equal(pool_segments(moved, [(0, 3)]), pooled[:1])


def test_max_pooling_and_kept_positions() -> None:
    acts_TD = torch.randn(8, 4)
    keep = torch.tensor([True, False, True, True, False, True, True, True])
    pooled = pool_segments(acts_TD, [(0, 5)], how="max", keep_T=keep)
    torch.testing.assert_close(pooled[0], acts_TD[[0, 2, 3]].max(0).values)
    mean = pool_segments(acts_TD, [(0, 5)], keep_T=keep)
    torch.testing.assert_close(mean[0], acts_TD[[0, 2, 3]].mean(0))


def test_bad_segments_are_refused_by_name() -> None:
    acts_TD = torch.randn(5, 3)
    with pytest.raises(DataError, match="segment 1 .*no token"):
        pool_segments(acts_TD, [(0, 2), (3, 3)])
    with pytest.raises(DataError, match="segment 0 covers tokens \\[2, 9\\)"):
        pool_segments(acts_TD, [(2, 9)])
    with pytest.raises(ConfigError, match="pooling must be one of"):
        pool_segments(acts_TD, [(0, 2)], how="median")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="ends before it starts"):
        token_ranges([(0, 1)], [(3, 1)])


def test_decoded_offsets_of_generated_ids_cover_each_tokens_text(model_dir) -> None:
    from saelab.models import load_tokenizer

    tok = load_tokenizer(str(model_dir))
    ids = tok("Let me check: 12 + 7 = 19. Wait, done.", add_special_tokens=False)["input_ids"]
    ids = ids + [tok.eos_token_id]  # a special token at the end spans nothing
    text, spans = decoded_offsets(tok, ids)
    assert text == "Let me check: 12 + 7 = 19. Wait, done."
    assert [text[a:b] for a, b in spans[:-1]] == [tok.decode([i]) for i in ids[:-1]]
    assert spans[-1][0] == spans[-1][1]
    steps = token_ranges(spans, sentence_spans(text))
    assert "".join(tok.decode(ids[a:b]) for a, b in steps).replace(" ", "") == \
        text.replace(" ", "")


def test_a_bare_list_marker_joins_the_sentence_after_it() -> None:
    text = "Let's go:\n1. Emma buys 4.\n2. She pays 20.\nStep 3: Done."
    assert [text[a:b] for a, b in sentence_spans(text)] == [
        "Let's go:", "1. Emma buys 4.", "2. She pays 20.", "Step 3: Done."]
