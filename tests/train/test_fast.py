"""FAST (Li et al. 2025): chat-formatted whole conversations, and the trainer's sequential order
(whole contexts per batch, in store order) against the default row shuffle."""

from __future__ import annotations

from typing import Any

import pytest
import torch

import saelab
from saelab.data import Document
from saelab.data.chat import chat_corpus, qa_messages, render
from saelab.errors import ConfigError, DataError
from saelab.store import ActivationStore, capture_to_store
from saelab.store import Want, open_source
from saelab.store.sequential import sequence_spans

PAD = 0


@pytest.fixture(scope="module")
def seq_store(tmp_path_factory, tiny_lm) -> ActivationStore:
    """Contexts of varying length (right padding left out at capture), like chat data."""
    g = torch.Generator().manual_seed(3)
    n, T = 40, 24
    tokens = torch.randint(2, 64, (n, T), generator=g)
    lengths = torch.randint(3, T + 1, (n,), generator=g)
    for i, L in enumerate(lengths.tolist()):
        tokens[i, L:] = PAD
    out = tmp_path_factory.mktemp("seq") / "store"
    return capture_to_store(tiny_lm, tokens, ["model.layers.1"], out, model_name="tiny",
                            special_ids=[PAD], norm_factor=None, shard_rows=97, progress=False)


def _row_ids(store: ActivationStore, batch: torch.Tensor) -> torch.Tensor:
    """Store row index of each row of a batch (rows matched by value)."""
    acts = torch.cat([a for a, _ in store.iter_rows()])
    d = torch.cdist(batch, acts, compute_mode="donot_use_mm_for_euclid_dist")
    assert (d.min(1).values < 1e-5).all()
    return d.argmin(1)


def as_train_data(data, d_in: int, cfg):
    """The source of one dictionary of width `d_in` reading `data`."""
    return open_source(data, [Want(None, d_in, d_in)], cfg)


def _epoch(data, start: int = 0) -> list[torch.Tensor]:
    it = data.batches(start)
    return [next(it)[0] for _ in range(data.per_epoch)]


def test_sequential_batches_are_whole_contexts_in_store_order(seq_store) -> None:
    cfg = saelab.TrainConfig(order="sequential", batch_size=64)
    data = as_train_data(seq_store, 32, cfg)
    idx = seq_store.row_index()
    batches = _epoch(data)
    # one epoch is the store, row for row, in order
    assert torch.equal(torch.cat(batches), torch.cat([a for a, _ in seq_store.iter_rows()]))
    seen: set[int] = set()
    at = 0
    for b in batches:
        assert 0 < b.shape[0] <= 64
        rows = torch.arange(at, at + b.shape[0])  # consecutive store rows (checked above)
        at += b.shape[0]
        ctx, pos = idx["ctx"][rows], idx["pos"][rows]
        # rows of one context are contiguous, positions increase within each
        runs = torch.unique_consecutive(ctx)
        assert len(runs) == len(set(runs.tolist()))
        for c in runs.tolist():
            p = pos[ctx == c]
            assert (p[1:] > p[:-1]).all()
            # whole: every row of the context is in this batch (no context exceeds 64 rows)
            assert len(p) == int((idx["ctx"] == c).sum())
            assert c not in seen
            seen.add(c)
    assert seen == set(idx["ctx"].tolist())
    # the next epoch repeats the order; a resumed stream starts at the same batch
    assert torch.equal(next(data.batches(data.per_epoch))[0], batches[0])
    assert torch.equal(next(data.batches(3))[0], batches[3])


def test_shuffled_order_mixes_contexts(seq_store) -> None:
    data = as_train_data(seq_store, 32, saelab.TrainConfig(batch_size=64))
    batch = next(data.batches(0))[0]
    acts = torch.cat([a for a, _ in seq_store.iter_rows()])
    assert not any(torch.equal(batch, acts[s:s + 64]) for s in range(len(acts) - 63))
    rows = _row_ids(seq_store, batch)  # (rows with equal activations may swap: no matter)
    ctx = seq_store.row_index()["ctx"][rows]
    runs = torch.unique_consecutive(ctx)
    assert len(runs) > len(set(runs.tolist()))  # some context's rows are split up


def test_sequence_spans_split_long_contexts_and_pack_short_ones() -> None:
    ctx = torch.tensor([0] * 3 + [1] * 10 + [2] * 2 + [3] * 2 + [4] * 4)
    assert sequence_spans(ctx, 4) == [(0, 3), (3, 7), (7, 11), (11, 13), (13, 17), (17, 21)]
    assert sequence_spans(ctx, 100) == [(0, 21)]
    assert sequence_spans(torch.zeros(0, dtype=torch.long), 4) == []


def test_fit_sequential_runs_and_resume_identity(seq_store, tmp_path) -> None:
    sae = saelab.create("topk", d_in=32, n_latents=64, k=4)
    cfg = saelab.TrainConfig(order="sequential", batch_size=64, epochs=2, warmup_steps=2,
                             progress=False, out=str(tmp_path / "run"), checkpoint_every=5)
    sae = saelab.fit(sae, seq_store, cfg)
    x = torch.cat([a for a, _ in seq_store.iter_rows()])
    assert torch.isfinite(sae(x).x_hat).all()
    assert cfg.run_identity()["order"] == "sequential"
    assert "order" not in saelab.TrainConfig().run_identity()  # old checkpoints still resume


def test_order_is_validated() -> None:
    with pytest.raises(ConfigError, match="order"):
        saelab.TrainConfig(order="random")
    cfg = saelab.TrainConfig(order="sequential", batch_size=8)
    with pytest.raises(ConfigError, match="activation store"):
        as_train_data(torch.randn(100, 32), 32, cfg)


# --- chat formatting (the packaged SmolLM2-135M-Instruct tokenizer) ---------------------------

@pytest.fixture(scope="module")
def smol_tok() -> Any:
    from saelab.models import load_tokenizer

    return load_tokenizer("smollm2-135m")


DOCS = [Document("Paris is the capital of France.", "Paris"),
        Document("A prime has exactly two divisors. " * 40, "Prime number"),
        Document("Mozart was a composer.", "Wolfgang Amadeus Mozart")]


def test_chat_corpus_uses_the_template_and_keeps_conversations_whole(smol_tok) -> None:
    start = smol_tok.convert_tokens_to_ids("<|im_start|>")
    end = smol_tok.convert_tokens_to_ids("<|im_end|>")
    corpus = chat_corpus(DOCS, smol_tok, context_len=64)
    # the long document does not fit in 64 tokens: skipped, never cut
    assert corpus.tokens.shape == (2, 64)
    assert sorted(set(corpus.doc_ids[corpus.doc_ids >= 0].tolist())) == [0, 2]
    pad = corpus.special_ids[0]
    assert corpus.special_ids == [pad] and pad not in (start, end)
    for row, doc_ids, doc in zip(corpus.tokens, corpus.doc_ids, (DOCS[0], DOCS[2])):
        ids = render(smol_tok, qa_messages(doc))
        assert row[:len(ids)].tolist() == ids  # one whole conversation from position 0
        assert (row[len(ids):] == pad).all() and (doc_ids[len(ids):] == -1).all()
        assert ids[0] == start and ids.count(start) == 3 and ids.count(end) == 3  # sys/user/asst
        text = smol_tok.decode(ids)
        assert f"user\nTell me about {doc.title}." in text and doc.text in text


def test_chat_corpus_bad_input(smol_tok) -> None:
    with pytest.raises(DataError, match="context_len"):
        chat_corpus(DOCS, smol_tok, context_len=8)

    class Plain:
        chat_template = None
        name_or_path = "plain"

    with pytest.raises(DataError, match="chat template"):
        chat_corpus(DOCS, Plain(), context_len=64)
