"""FAST (Li et al. 2025) order: whole contexts of a store, in store order, packed into batches
(`TrainConfig.order == "sequential"`)."""

from __future__ import annotations

import itertools
from typing import Iterator

import torch
from torch import Tensor

from saelab.store.reader import ActivationStore

Batch = tuple[Tensor, ...]


def sequence_spans(ctx: Tensor, batch_size: int) -> list[tuple[int, int]]:
    """Row ranges [a, b) of the batches of a sequential pass over rows whose context ids are
    `ctx` (store order): each batch holds whole contexts, consecutive in the store, as many as fit
    in `batch_size` rows; a context longer than `batch_size` is split into consecutive pieces, each
    a batch of its own. Rows of one context are never spread over non-adjacent batches."""
    n = int(ctx.shape[0])
    if n == 0:
        return []
    cuts = (ctx[1:] != ctx[:-1]).nonzero().flatten().add(1).tolist()
    starts, ends = [0, *cuts], [*cuts, n]
    spans: list[tuple[int, int]] = []
    a = b = 0  # the batch being filled: rows [a, b)
    for s, e in zip(starts, ends):
        if e - s > batch_size:  # a long context: close the batch, then one batch per piece
            if b > a:
                spans.append((a, b))
            spans.extend((p, min(p + batch_size, e)) for p in range(s, e, batch_size))
            a = b = e
        elif e - a > batch_size:  # it does not fit: close the batch, start one with it
            spans.append((a, b))
            a, b = s, e
        else:
            b = e
    if b > a:
        spans.append((a, b))
    return spans


class SequentialBatches:
    """An endless, deterministic stream of batches over a store read in store order, whole
    contexts per batch (FAST, Li et al. 2025): no row-level shuffle, so a batch holds complete
    sequences with their rows in position order, and the next batch continues where it stopped.
    Batches hold at most `batch_size` rows (fewer where the next context does not fit). Each
    epoch repeats the same order. Memory: the shards a batch touches (one, or two at a seam)."""

    def __init__(self, store: ActivationStore, names: list[str], batch_size: int):
        self.store = store
        self.names = names
        ctx = store.row_index()["ctx"]
        self.spans = sequence_spans(ctx, batch_size)
        sizes = [s["rows"] for s in store.manifest["shards"]]
        self.offsets = torch.tensor([0, *itertools.accumulate(sizes)])
        self._cache: tuple[int, Batch] | None = None

    def batches_per_epoch(self) -> int:
        return len(self.spans)

    def _shard(self, i: int) -> Batch:
        if self._cache is None or self._cache[0] != i:
            self._cache = None  # drop the previous shard before reading the next
            self._cache = (i, tuple(self.store.read_shard(i, self.names)))
        return self._cache[1]

    def rows(self, a: int, b: int) -> Batch:
        """Rows [a, b) of the store (in store order)."""
        first = int(torch.searchsorted(self.offsets, a, right=True)) - 1
        parts: list[Batch] = []
        i = first
        while a < b:
            lo, hi = int(self.offsets[i]), int(self.offsets[i + 1])
            take = min(b, hi)
            parts.append(tuple(t[a - lo:take - lo] for t in self._shard(i)))
            a, i = take, i + 1
        if len(parts) == 1:
            return tuple(t.clone() for t in parts[0])
        return tuple(torch.cat(ts) for ts in zip(*parts))

    def iterate(self, start: int = 0) -> Iterator[Batch]:
        """Batches from global batch index `start` on (earlier ones are not read)."""
        n = len(self.spans)
        i = start
        while True:
            yield self.rows(*self.spans[i % n])
            i += 1
