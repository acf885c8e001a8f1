"""Tokenise documents into fixed-length contexts, remembering which document each token is from.

Layout. Documents are tokenised without special tokens and joined into one stream with a
separator token between consecutive documents. The stream is cut into pieces of
`context_len - 1` tokens, and each piece gets the BOS token in front (with `add_bos=False` the
pieces are `context_len` long and nothing is added). A context may therefore start in the
middle of a document; the tail of the stream shorter than a piece is dropped.

Which tokens (see `boundary_tokens`):
- separator: `<|endoftext|>` when the vocabulary has it (the document separator GPT-2-style
  and SmolLM2 models were pretrained with), else the EOS token, else the SEP token ([SEP]).
- BOS: the token the tokenizer puts in front of a text by itself (Llama's `<s>`, BERT's [CLS]),
  else the separator (so a context looks like the start of a pretraining document), else the
  BOS token. For SmolLM2-Instruct this picks `<|endoftext|>` (id 0) for both, not its
  declared bos `<|im_start|>`, which opens a chat turn.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple

import torch
from tqdm.auto import tqdm

from saelab.data._sources import Document
from saelab.errors import DataError

logger = logging.getLogger(__name__)

_BATCH_DOCS = 64
SEPARATOR = "<|endoftext|>"
"""The document separator token of GPT-2-style vocabularies (SmolLM2's included)."""
_PROGRESS_DELAY_S = 2.0


class TokenizedCorpus(NamedTuple):
    """Documents tokenised into fixed-length contexts."""

    tokens: torch.Tensor
    """Token ids, int64 [N, context_len]."""
    doc_ids: torch.Tensor
    """Index into `documents` of each token, int64 [N, context_len]; -1 for BOS and separators."""
    documents: list[Document]
    """The documents, as given (doc_ids index into this list)."""
    special_ids: list[int]
    """Sorted ids of the tokenizer's special tokens (BOS, EOS, pad, separator, ...)."""


class BoundaryTokens(NamedTuple):
    """The tokens `pack` puts at the start of contexts and between documents."""

    bos: int | None
    """Put in front of every context when add_bos is on; None if the tokenizer has none."""
    separator: int | None
    """Put between consecutive documents; None if the tokenizer has none."""


def boundary_tokens(tokenizer: Any) -> BoundaryTokens:
    """The BOS and separator ids `pack` uses for this tokenizer (rules in the module docstring)."""
    vocab = tokenizer.get_vocab()
    separator = vocab.get(SEPARATOR)
    if separator is None:
        separator = _first_id(tokenizer.eos_token_id, tokenizer.sep_token_id)
    bos = _first_id(_own_prefix(tokenizer), separator, tokenizer.bos_token_id)
    return BoundaryTokens(bos=bos, separator=separator)


def pack(documents: Sequence[Document | str], tokenizer: Any, context_len: int,
         max_contexts: int | None = None, add_bos: bool = True) -> TokenizedCorpus:
    """Tokenise `documents` into contexts of `context_len` tokens (layout in the module docstring).

    Tokenises in batches and stops as soon as `max_contexts` contexts are filled. Deterministic:
    the same documents and tokenizer always give the same tensors.
    """
    docs = [d if isinstance(d, Document) else Document(text=d, title="") for d in documents]
    _check(docs, context_len, max_contexts)
    marks = boundary_tokens(tokenizer)
    bos = marks.bos if add_bos else None
    if add_bos and bos is None:
        logger.warning("tokenizer has no BOS-like token: contexts start without one")
    piece = context_len - (bos is not None)
    needed = None if max_contexts is None else max_contexts * piece
    ids, owners = _token_stream(docs, tokenizer, marks.separator, needed)
    n = len(ids) // piece if max_contexts is None else min(len(ids) // piece, max_contexts)
    if n == 0:
        raise DataError(f"the documents hold {len(ids)} tokens, fewer than one context of "
                        f"{context_len}: pass more text or a smaller context_len")
    tokens = torch.tensor(ids[: n * piece], dtype=torch.int64).view(n, piece)
    doc_ids = torch.tensor(owners[: n * piece], dtype=torch.int64).view(n, piece)
    if bos is not None:
        tokens = torch.cat([torch.full((n, 1), bos, dtype=torch.int64), tokens], dim=1)
        doc_ids = torch.cat([torch.full((n, 1), -1, dtype=torch.int64), doc_ids], dim=1)
    special = set(tokenizer.all_special_ids) | {i for i in marks if i is not None}
    return TokenizedCorpus(tokens=tokens, doc_ids=doc_ids, documents=docs,
                           special_ids=sorted(special))


def _token_stream(docs: list[Document], tokenizer: Any, separator: int | None,
                  needed: int | None) -> tuple[list[int], list[int]]:
    """The joined token stream and the document index of each token (-1 for separators),
    stopping once it holds `needed` tokens."""
    ids: list[int] = []
    owners: list[int] = []
    for start, batch in _batches(docs, tokenizer):
        for offset, doc_ids in enumerate(batch):
            if not doc_ids:
                continue
            if ids and separator is not None:
                ids.append(separator)
                owners.append(-1)
            ids.extend(doc_ids)
            owners.extend([start + offset] * len(doc_ids))
        if needed is not None and len(ids) >= needed:
            break
    return ids, owners


def _batches(docs: list[Document], tokenizer: Any) -> Iterator[tuple[int, list[list[int]]]]:
    """(index of the batch's first document, token ids of each document), batch by batch,
    with a progress bar that appears only when tokenising takes more than a moment."""
    with tqdm(total=len(docs), desc="tokenising", unit="doc", leave=False,
              delay=_PROGRESS_DELAY_S, disable=len(docs) < 10 * _BATCH_DOCS) as bar:
        for start in range(0, len(docs), _BATCH_DOCS):
            texts = [d.text for d in docs[start:start + _BATCH_DOCS]]
            # verbose=False: long documents are cut into contexts, so the tokenizer's
            # "longer than the model's maximum length" warning does not apply.
            encoded = tokenizer(texts, add_special_tokens=False, return_attention_mask=False,
                                verbose=False)
            yield start, encoded["input_ids"]
            bar.update(len(texts))


def _own_prefix(tokenizer: Any) -> int | None:
    """The token the tokenizer puts in front of a text by itself, if any."""
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a", add_special_tokens=True)["input_ids"]
    if len(full) > len(plain) and full[0] != plain[0] and full[0] in tokenizer.all_special_ids:
        return full[0]
    return None


def _first_id(*candidates: int | None) -> int | None:
    return next((c for c in candidates if isinstance(c, int)), None)


def _check(docs: list[Document], context_len: int, max_contexts: int | None) -> None:
    if context_len < 2:
        raise DataError(f"context_len must be at least 2, got {context_len}")
    if max_contexts is not None and max_contexts < 1:
        raise DataError(f"max_contexts must be at least 1, got {max_contexts}")
    if not docs or not any(d.text.strip() for d in docs):
        raise DataError("no text to tokenise: the documents are empty")
