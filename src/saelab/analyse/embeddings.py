"""SAE embeddings of a corpus, stored sparse: one row per document, one column per latent.

A row holds, for each latent that fired in the document, its pooled code (max or mean over the
document's tokens) and the character span of the token where it peaked, so that an example can
show which words set the feature off. On disk (never pickle) a folder holds
`embeddings.safetensors` (the CSR arrays `indptr`, `latents`, `values`, `spans`, `n_tokens`)
and `embeddings.json` (format, the settings that made it, the documents' titles, texts and
labels); the folder is written atomically.

After Jiang, Sun, Dunlap, Smith and Nanda 2025, "Interpretable Embeddings with Sparse
Autoencoders: A Data Analysis Toolkit" (reference: github.com/nickjiang2378/interp_embed,
`interp_embed/dataset_analysis.py`, which keeps one scipy CSR matrix of token activations per
document in a pickle and max-pools on demand). saelab pools once when embedding and keeps only
the pooled row and the peak's span: a corpus of 10,000 documents is a few MB, and reading it
needs neither the model nor pickle.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import load_file, save_file
from scipy import sparse

from saelab._paths import atomic_path
from saelab.data import Document
from saelab.errors import DataError, FormatError

FORMAT = "saelab-embeddings/1"
"""The `format` field of embeddings.json."""
TENSORS = "embeddings.safetensors"
META = "embeddings.json"


@dataclass
class Embeddings:
    """Pooled feature activations of N documents (CSR rows over `n_latents` columns)."""

    indptr_N1: np.ndarray
    """Row pointers [N + 1] (int64): row i's entries are [indptr[i], indptr[i + 1])."""
    latents_Z: np.ndarray
    """Latent index of each stored entry [nnz] (int32), increasing within a row."""
    values_Z: np.ndarray
    """Pooled code of each entry [nnz] (float32; never 0)."""
    spans_Z2: np.ndarray
    """Character span [start, end) in the document's text of the token where the entry's latent
    peaked [nnz, 2] (int32)."""
    n_tokens_N: np.ndarray
    """Tokens of each document that were encoded [N] (int32; the first token, padding and the
    excluded positions are not)."""
    n_latents: int
    """Number of latents of the dictionary (columns)."""
    documents: list[Document]
    """The documents, in row order."""
    settings: dict[str, Any] = field(default_factory=dict)
    """What made them: dictionary fingerprint, model, hookpoint, pooling, corpus, ... (two
    embeddings are comparable when these agree but for the corpus)."""

    def __post_init__(self) -> None:
        n, nnz = len(self.documents), len(self.latents_Z)
        if self.indptr_N1.shape != (n + 1,) or int(self.indptr_N1[-1]) != nnz:
            raise FormatError(f"embeddings: {n} documents but row pointers of shape "
                              f"{self.indptr_N1.shape} ending at {int(self.indptr_N1[-1])} for "
                              f"{nnz} entries")
        if self.values_Z.shape != (nnz,) or self.spans_Z2.shape != (nnz, 2):
            raise FormatError("embeddings: latents, values and spans differ in length")
        if self.n_tokens_N.shape != (n,):
            raise FormatError("embeddings: one token count per document expected")

    def __len__(self) -> int:
        return len(self.documents)

    def matrix(self) -> sparse.csr_matrix:
        """The pooled codes as a scipy CSR matrix [N, n_latents] (float32)."""
        return sparse.csr_matrix((self.values_Z, self.latents_Z, self.indptr_N1),
                                 shape=(len(self), self.n_latents))

    def active(self, threshold: float = 0.0) -> sparse.csr_matrix:
        """Whether each latent fired in each document (pooled code above `threshold`), as a
        0/1 CSR matrix [N, n_latents] (int32): the paper's binarised embedding."""
        binary = self.matrix()
        binary.data = (binary.data > threshold).astype(np.int32)
        binary.eliminate_zeros()
        return binary.astype(np.int32)

    def frequency(self, threshold: float = 0.0) -> np.ndarray:
        """Share of documents in which each latent fired [n_latents] (float64)."""
        if not len(self):
            return np.zeros(self.n_latents)
        return np.asarray(self.active(threshold).sum(0)).ravel() / len(self)

    def entry(self, doc: int, latent: int) -> tuple[float, tuple[int, int]] | None:
        """(pooled code, peak span) of `latent` in document `doc`, or None where it is silent."""
        lo, hi = int(self.indptr_N1[doc]), int(self.indptr_N1[doc + 1])
        at = lo + int(np.searchsorted(self.latents_Z[lo:hi], latent))
        if at < hi and int(self.latents_Z[at]) == latent:
            return float(self.values_Z[at]), (int(self.spans_Z2[at, 0]), int(self.spans_Z2[at, 1]))
        return None

    def excerpt(self, doc: int, latent: int, width: int = 70) -> str:
        """Document `doc`'s text around the token where `latent` peaked, the token marked
        «thus», about `width` characters each side, on one line (a line break in the marked
        token shown as ⏎)."""
        text, found = self.documents[doc].text, self.entry(doc, latent)
        if found is None:
            return _one_line(text[:2 * width])
        start, end = found[1]
        left, right = max(0, start - width), min(len(text), end + width)
        marked = text[start:end].replace("\n", "⏎")  # a line break token stays visible
        return (("..." if left else "") + _one_line(text[left:start]) + "«"
                + _one_line(marked) + "»" + _one_line(text[end:right])
                + ("..." if right < len(text) else ""))

    def top_documents(self, latent: int, n: int = 3) -> list[int]:
        """The `n` documents where `latent`'s pooled code is largest (largest first)."""
        column = self.matrix()[:, latent].toarray().ravel()
        order = np.argsort(-column, kind="stable")[:n]
        return [int(i) for i in order if column[i] > 0]

    def save(self, folder: str | Path) -> Path:
        """Write the two files into `folder`, atomically (the folder is replaced whole)."""
        folder = Path(folder)
        with atomic_path(folder) as tmp:
            tmp.mkdir()
            save_file({"indptr": self.indptr_N1.astype(np.int64),
                       "latents": self.latents_Z.astype(np.int32),
                       "values": self.values_Z.astype(np.float32),
                       "spans": self.spans_Z2.astype(np.int32),
                       "n_tokens": self.n_tokens_N.astype(np.int32)}, str(tmp / TENSORS))
            meta = {"format": FORMAT, "n_documents": len(self), "n_latents": self.n_latents,
                    "settings": self.settings,
                    "documents": [{"title": d.title, "label": d.label, "text": d.text}
                                  for d in self.documents]}
            (tmp / META).write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> "Embeddings":
        """Read embeddings saved by `save` (FormatError for a folder that holds none)."""
        folder = Path(folder)
        if not (folder / META).is_file() or not (folder / TENSORS).is_file():
            raise DataError(f"{folder} holds no embeddings ({META} and {TENSORS}); make them "
                            f"with `saelab embed`")
        meta = json.loads((folder / META).read_text(encoding="utf-8"))
        if meta.get("format") != FORMAT:
            raise FormatError(f"{folder / META}: format {meta.get('format')!r}, expected "
                              f"{FORMAT!r}")
        arrays = load_file(str(folder / TENSORS))
        docs = [Document(d["text"], d["title"], d.get("label")) for d in meta["documents"]]
        return cls(arrays["indptr"], arrays["latents"], arrays["values"], arrays["spans"],
                   arrays["n_tokens"], int(meta["n_latents"]), docs, meta.get("settings", {}))


def is_embeddings(folder: str | Path) -> bool:
    """Whether `folder` holds saved embeddings."""
    return (Path(folder) / META).is_file()


def _one_line(text: str) -> str:
    """`text` with each run of white space (line breaks too) made one space."""
    return re.sub(r"\s+", " ", text)
