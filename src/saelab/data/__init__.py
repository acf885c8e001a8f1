"""Text for capture: sources (the packaged Wikipedia summaries, local files, Hugging Face
datasets) and tokenisation into fixed-length contexts with token-to-document metadata.

    >>> docs = read_documents("wikipedia", limit=1000)
    >>> corpus = pack(docs, tokenizer, context_len=128, max_contexts=500)
    >>> corpus.tokens.shape               # torch.Size([500, 128])
"""

from saelab.data._pack import (SEPARATOR, BoundaryTokens, TokenizedCorpus, boundary_tokens,
                               pack)
from saelab.data._sources import WIKIPEDIA, Document, read_documents, wikipedia_summaries
from saelab.data.labelled import LabelledTexts, load_labelled, read_labelled, wikipedia_topics

__all__ = ["SEPARATOR", "WIKIPEDIA", "BoundaryTokens", "Document", "LabelledTexts",
           "TokenizedCorpus", "boundary_tokens", "load_labelled", "pack", "read_documents",
           "read_labelled", "wikipedia_summaries", "wikipedia_topics"]
