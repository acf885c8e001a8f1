"""Data analysis with SAE embeddings: each document of a corpus becomes the pooled activations
of a dictionary's latents, a sparse vector whose dimensions are concepts. On top of it: the
latents that tell two corpora apart (`diff`), latents that co-occur beyond chance
(`cooccurrences`), and clustering and retrieval along chosen latents (`cluster`, `retrieve`).

After Jiang, Sun, Dunlap, Smith and Nanda 2025, "Interpretable Embeddings with Sparse
Autoencoders: A Data Analysis Toolkit" (code: github.com/nickjiang2378/interp_embed).

    >>> session = Session("runs/l15/sae", EmbedOptions(limit=500))
    >>> wiki, _, _ = session.embeddings("wikipedia")
    >>> bible, _, _ = session.embeddings("bible")
    >>> print(format_diff(diff(wiki, bible, name_a="wikipedia", name_b="bible")))
"""

from saelab.analyse.corpora import PACKAGED, Corpus, read_corpus
from saelab.analyse.correlate import Cooccurrences, Pair, cooccurrences, format_cooccurrences
from saelab.analyse.diff import DiffResult, FeatureDiff, diff, format_diff
from saelab.analyse.embed import embed_documents, fingerprint
from saelab.analyse.embeddings import Embeddings
from saelab.analyse.select import cluster, concept_matrix, latents_for_labels, retrieve
from saelab.analyse.session import EmbedOptions, Session
from saelab.analyse.steps import DiffConfig, EmbedConfig, diff_step, embed_step

__all__ = ["PACKAGED", "Cooccurrences", "Corpus", "DiffConfig", "DiffResult", "EmbedConfig",
           "EmbedOptions", "Embeddings", "FeatureDiff", "Pair", "Session", "cluster",
           "concept_matrix", "cooccurrences", "diff", "diff_step", "embed_documents", "embed_step",
           "fingerprint", "format_cooccurrences", "format_diff", "latents_for_labels",
           "read_corpus", "retrieve"]
