"""Pooling token activations over segments of a text: sentence-level steps of a chain of
thought, whole documents, or any list of character spans.

    >>> spans = sentence_spans(text)                      # [(start, end), ...] characters
    >>> ranges = token_ranges(offsets, spans)             # [(first, last + 1), ...] tokens
    >>> steps_SD = pool_segments(acts_TD, ranges)         # one mean activation per sentence

The segmentation is only a list of character spans, so the same three calls pool a document
(`[(0, len(text))]`), the steps of a chain of thought (`sentence_spans`, as RISE does: Zhang et
al. 2025, "Fantastic Reasoning Behaviors and Where to Find Them", arXiv 2512.23988, which
segments chain-of-thought traces into sentence-level steps and trains SAEs on step-level
activations; no reference code of theirs was found), or spans a caller chose. Token offsets
come from a fast tokenizer (`return_offsets_mapping=True`) or, for ids a model generated,
from `decoded_offsets`.

A token belongs to every segment its character span overlaps; tokens with an empty span
(special tokens, whose offsets are (0, 0)) belong to none. With spans stripped of white space
(as `sentence_spans` gives them) a token " Wait" that carries the space before a sentence
belongs to that sentence alone.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor

from saelab.errors import ConfigError, DataError

Span = tuple[int, int]
"""[start, end) in characters (segments) or in token positions (ranges)."""
POOLINGS = ("mean", "max")

_SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]*\s+|\n+")
"""A sentence ends at ., ! or ? (closing quotes or brackets kept) followed by white space, or at
a line break; a full stop inside a number ("3.5") or a word ("e.g.x") does not end one."""
_MARKER = re.compile(r"\(?\d{1,3}[.)]|[-*•]|step \d+[.:]?", re.I)
"""A list marker ("1.", "2)", "-", "Step 3:"): not a sentence of its own, the start of the next."""


def sentence_spans(text: str) -> list[Span]:
    """Character spans of the sentences of `text`, each stripped of surrounding white space,
    empty ones left out. Sentences end at ., ! or ? followed by white space, and at line
    breaks (each line of a numbered list is a step); a bare list marker ("1.") is joined to
    the sentence after it."""
    spans, start = [], 0
    for m in _SENTENCE_END.finditer(text):
        spans.append((start, m.start()))
        start = m.end()
    spans.append((start, len(text)))
    out: list[Span] = []
    pending: int | None = None  # start of a list marker waiting for its sentence
    for a, b in (_strip(text, a, b) for a, b in spans):
        if b <= a:
            continue
        if _MARKER.fullmatch(text[a:b]):
            pending = a if pending is None else pending
            continue
        out.append((a if pending is None else pending, b))
        pending = None
    if pending is not None:
        out.append(_strip(text, pending, len(text)))
    return out


def _strip(text: str, start: int, end: int) -> Span:
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return start, end


def token_ranges(offsets: Sequence[Sequence[int]], spans: Sequence[Span]) -> list[Span]:
    """For each character span, the token positions [first, last + 1) of the tokens whose
    character spans overlap it ((first, first) when none does). `offsets` gives each token's
    [start, end) in the same text; empty ones (special tokens) overlap nothing."""
    starts = torch.tensor([int(o[0]) for o in offsets], dtype=torch.long)
    ends = torch.tensor([int(o[1]) for o in offsets], dtype=torch.long)
    real = ends > starts
    out = []
    for a, b in spans:
        if b < a:
            raise ConfigError(f"segment ({a}, {b}) ends before it starts")
        hit = (real & (starts < b) & (ends > a)).nonzero()[:, 0]
        out.append((int(hit[0]), int(hit[-1]) + 1) if len(hit) else (0, 0))
    return out


def pool_segments(acts_TD: Tensor, ranges: Sequence[Span],
                  how: Literal["mean", "max"] = "mean", keep_T: Tensor | None = None) -> Tensor:
    """One pooled row [S, D] per token range: the mean (or max) of `acts_TD[first:last]`, over
    the positions `keep_T` (bool [T]) keeps when given. A DataError names a segment with no
    token to pool (an empty range, or every position left out)."""
    if how not in POOLINGS:
        raise ConfigError(f"pooling must be one of {', '.join(POOLINGS)}, got {how!r}")
    if acts_TD.ndim != 2:
        raise ConfigError(f"pool_segments needs activations [tokens, d], got shape "
                          f"{tuple(acts_TD.shape)}")
    n = acts_TD.shape[0]
    keep = torch.ones(n, dtype=torch.bool) if keep_T is None else keep_T.bool().cpu()
    rows = []
    for i, (a, b) in enumerate(ranges):
        if not 0 <= a <= b <= n:
            raise DataError(f"segment {i} covers tokens [{a}, {b}) of a sequence of {n}")
        index = (a + keep[a:b].nonzero()[:, 0]).to(acts_TD.device)
        if not len(index):
            raise DataError(f"segment {i} (tokens [{a}, {b})) has no token to pool: drop empty "
                            f"segments (token_ranges gives (first, first) for them) first")
        part = acts_TD[index].float()
        rows.append(part.mean(0) if how == "mean" else part.max(0).values)
    if not rows:
        return acts_TD.new_zeros(0, acts_TD.shape[1], dtype=torch.float32)
    return torch.stack(rows)


def decoded_offsets(tokenizer, ids: Sequence[int]) -> tuple[str, list[Span]]:
    """(text, character span of each token in it) for token ids a model generated: the text
    is the ids decoded without special tokens, and token i spans what decoding ids[:i + 1]
    added to decoding ids[:i] (special tokens and bytes of a split character span nothing
    until the character is complete)."""
    spans, previous = [], 0
    for i in range(len(ids)):
        length = len(tokenizer.decode(list(ids[:i + 1]), skip_special_tokens=True))
        length = max(length, previous)
        spans.append((previous, length))
        previous = length
    text = tokenizer.decode(list(ids), skip_special_tokens=True)
    return text, [(a, min(b, len(text))) for a, b in spans]
