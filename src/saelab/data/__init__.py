"""Text for capture: sources (the packaged Wikipedia summaries, local files, Hugging Face
datasets) and tokenisation into fixed-length contexts with token-to-document metadata.

    >>> docs = read_documents("wikipedia", limit=1000)
    >>> corpus = pack(docs, tokenizer, context_len=128, max_contexts=500)
    >>> corpus.tokens.shape               # torch.Size([500, 128])
"""

from saelab.data._pack import (SEPARATOR, BoundaryTokens, TokenizedCorpus, boundary_tokens,
                               pack)
from saelab.data._sources import WIKIPEDIA, Document, read_documents, wikipedia_summaries

__all__ = ["SEPARATOR", "WIKIPEDIA", "BoundaryTokens", "Document", "TokenizedCorpus",
           "boundary_tokens", "pack", "read_documents", "wikipedia_summaries"]
