"""Token alignment by character offsets: the pairs are the positions where both tokenisations
have read exactly the same prefix of the text."""

from __future__ import annotations

from saelab.transfer import align_offsets
from saelab.transfer.align import end_positions
from tests.transfer.conftest import TEXTS


def test_pairs_are_tokens_ending_at_the_same_offset() -> None:
    # "unbelievable day": a = [un][believ][able][ day], b = [BOS][unbeliev][able][ d][ay]
    a = [(0, 2), (2, 8), (8, 12), (12, 16)]
    b = [(0, 0), (0, 8), (8, 12), (12, 14), (14, 16)]
    pairs = align_offsets(a, b)
    assert (pairs.pos_a, pairs.pos_b) == ([1, 2, 3], [1, 2, 4])
    assert pairs.aligned == 3


def test_tokens_covering_no_text_never_align_and_byte_pieces_keep_the_last() -> None:
    ends = end_positions([(0, 0), (0, 3), (3, 4), (3, 4), (4, 4)])
    assert ends == {3: 1, 4: 3}  # BOS and the empty trailing token left out; last byte piece


def test_real_tokenizers_align_at_identical_text_prefixes(tokenizers) -> None:
    tok_a, tok_b = tokenizers
    text = TEXTS[2]
    off_a = tok_a(text, return_offsets_mapping=True)["offset_mapping"]
    off_b = tok_b(text, return_offsets_mapping=True)["offset_mapping"]
    pairs = align_offsets(off_a, off_b)
    assert pairs.aligned >= 10
    for i, j in zip(pairs.pos_a, pairs.pos_b):
        assert off_a[i][1] == off_b[j][1]  # both have read text[:end] and nothing more
    assert off_a[pairs.pos_a[-1]][1] == len(text)  # the whole text, read by both
