"""Shared numerical pieces: top-k selection, sparse decode, fused TopK encoder."""

from saelab.ops.sparse import (SparseCodes, linear, sparse_decode, to_dense, topk_encode,
                               topk_relu)

__all__ = ["SparseCodes", "linear", "sparse_decode", "to_dense", "topk_encode", "topk_relu"]
