"""Chat-formatted data for instruct models: one conversation per context, never packed.

FAST (Li et al. 2025, "Training Superior Sparse Autoencoders for Instruct Models",
arXiv:2506.07691) trains SAEs of instruct models on the activations of whole instruction
instances rendered with the model's own chat template, one instance at a time, instead of the
block training used for base models (documents concatenated and cut into fixed-length blocks,
so a block mixes the tail of one sample with the head of another). This module builds such
data; `TrainConfig(order="sequential")` is the matching trainer option (see train/data.py).

Layout. Each document becomes one conversation (by default: the user asks about the title, the
assistant answers with the text), rendered with the tokenizer's chat template
(`apply_chat_template`) and tokenised with the template's special tokens (for SmolLM2:
`<|im_start|>`, `<|im_end|>`). Each conversation fills one row of `tokens` from position 0 and
is right-padded to `context_len` with a padding id that the template never produces (the
`<|endoftext|>` separator where the vocabulary has it); the model is causal, so the padding does
not change the activations of the conversation. Conversations longer than `context_len` are
skipped (counted in the log), never cut: a context holds exactly one whole conversation.

What capture should leave out. `ChatCorpus.special_ids` holds only the padding id, so that
`capture_to_store(..., special_ids=corpus.special_ids)` drops the padding and keeps the
template's tokens: FAST trains on them (the paper's special-token findings depend on it).
Massive-activation positions (the first token at middle layers) still go through the norm rule.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import torch

from saelab.capture.exclude import NORM_FACTOR
from saelab.data import SEPARATOR, WIKIPEDIA, Document, TokenizedCorpus, read_documents
from saelab.errors import DataError

logger = logging.getLogger(__name__)

Messages = list[dict[str, str]]


def qa_messages(doc: Document) -> Messages:
    """The default conversation of a document: the user asks about its title, the assistant
    answers with its text (a document without a title gets a generic question)."""
    question = f"Tell me about {doc.title}." if doc.title else "Tell me about this topic."
    return [{"role": "user", "content": question},
            {"role": "assistant", "content": doc.text.strip()}]


def render(tokenizer: Any, messages: Messages) -> list[int]:
    """Token ids of one conversation under the tokenizer's chat template."""
    if getattr(tokenizer, "chat_template", None) is None:
        raise DataError(f"tokenizer {getattr(tokenizer, 'name_or_path', '')!r} has no chat "
                        f"template: chat data (FAST) needs an instruct model's tokenizer")
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    # The template writes its special tokens as text; tokenising that text without adding any
    # more gives the ids the model saw in fine-tuning (stable across transformers versions,
    # whose tokenize=True returns a list in some and a BatchEncoding in others).
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def padding_id(tokenizer: Any, used: set[int]) -> int:
    """An id to pad with that no conversation uses: `<|endoftext|>` if present, else the pad
    token, else EOS."""
    for cand in (tokenizer.get_vocab().get(SEPARATOR), tokenizer.pad_token_id,
                 tokenizer.eos_token_id):
        if isinstance(cand, int) and cand not in used:
            return cand
    raise DataError("no padding id that the chat template does not itself produce "
                    "(tried <|endoftext|>, the pad token and EOS)")


def chat_corpus(documents: Sequence[Document] | str, tokenizer: Any, context_len: int,
                max_conversations: int | None = None,
                messages: Callable[[Document], Messages] = qa_messages) -> TokenizedCorpus:
    """One chat-formatted conversation per row of `tokens` [N, context_len] (layout in the module
    docstring). `documents` is a list or a source name for `read_documents` ("wikipedia").
    `doc_ids` gives each token's document index (-1 on padding); `special_ids` the padding id
    only (what capture should leave out)."""
    if context_len < 2:
        raise DataError(f"context_len must be at least 2, got {context_len}")
    if max_conversations is not None and max_conversations < 1:
        raise DataError(f"max_conversations must be at least 1, got {max_conversations}")
    docs = read_documents(documents) if isinstance(documents, str) else list(documents)
    rows: list[list[int]] = []
    owners: list[int] = []
    skipped = 0
    for i, doc in enumerate(docs):
        if not doc.text.strip():
            continue
        ids = render(tokenizer, messages(doc))
        if len(ids) > context_len:
            skipped += 1
            continue
        rows.append(ids)
        owners.append(i)
        if max_conversations is not None and len(rows) >= max_conversations:
            break
    if not rows:
        raise DataError(f"no conversation fits in context_len={context_len} "
                        f"({skipped} were longer); raise context_len")
    if skipped:
        logger.info("chat_corpus: %d conversations longer than %d tokens skipped (kept whole "
                    "or not at all)", skipped, context_len)
    pad = padding_id(tokenizer, {t for r in rows for t in r})
    tokens = torch.full((len(rows), context_len), pad, dtype=torch.int64)
    doc_ids = torch.full((len(rows), context_len), -1, dtype=torch.int64)
    for j, (ids, owner) in enumerate(zip(rows, owners)):
        tokens[j, :len(ids)] = torch.tensor(ids, dtype=torch.int64)
        doc_ids[j, :len(ids)] = owner
    return TokenizedCorpus(tokens=tokens, doc_ids=doc_ids, documents=docs, special_ids=[pad])


def capture_chat(lm, out: str, hookpoints: list[str], n_conversations: int,
                 context_len: int = 256, skip_conversations: int = 0,
                 dataset: str = WIKIPEDIA, norm_factor: float | None = NORM_FACTOR,
                 **capture_kwargs):
    """Capture `lm`'s activations on chat-formatted conversations [skip, skip + n) of `dataset`
    into a store: padding left out, template tokens kept, one conversation per context."""
    from saelab.store import capture_to_store

    corpus = chat_corpus(dataset, lm.tokenizer, context_len,
                         max_conversations=skip_conversations + n_conversations)
    if corpus.tokens.shape[0] <= skip_conversations:
        raise DataError(f"only {corpus.tokens.shape[0]} conversations fit, none left after "
                        f"skipping {skip_conversations}")
    return capture_to_store(lm.model, corpus.tokens[skip_conversations:], hookpoints, out,
                            model_name=lm.name, doc_ids=corpus.doc_ids[skip_conversations:],
                            special_ids=corpus.special_ids, norm_factor=norm_factor,
                            **capture_kwargs)
