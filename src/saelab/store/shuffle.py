"""Shuffled batches over chunks of rows (store shards or an in-memory tensor) with bounded memory.

Each epoch permutes the chunks, groups consecutive ones up to `buffer_rows`, loads one group at a
time, permutes its rows and yields full batches; the few rows that do not fill a last batch of a
group are skipped that epoch. The plan depends only on the seed and the chunk sizes, so a run can
resume at any batch index without reading the batches it skips.
"""

from __future__ import annotations

from typing import Callable, Iterator

import torch
from torch import Tensor

Rows = tuple[Tensor, ...]
"""One or more row-aligned tensors (inputs, and targets for transcoders)."""


class ShuffledBatches:
    """An endless, deterministic stream of shuffled batches over chunks of rows."""

    def __init__(self, chunk_rows: list[int], load: Callable[[int], Rows], batch_size: int,
                 buffer_rows: int, seed: int = 0,
                 load_into: Callable[[int, Rows], bool] | None = None):
        self.chunk_rows = chunk_rows
        self.load = load
        self.load_into = load_into
        """Optional: write chunk i straight into the given slices of the buffer and return
        True (False when it cannot, e.g. another dtype; `load` is used then)."""
        self.batch_size = batch_size
        self.buffer_rows = max(buffer_rows, batch_size)
        self.seed = seed

    def _generator(self, *salt: int) -> torch.Generator:
        g = torch.Generator()
        g.manual_seed(hash((self.seed, *salt)) & 0x7FFF_FFFF_FFFF)
        return g

    def groups(self, epoch: int) -> list[list[int]]:
        """Chunk indices of each group of epoch `epoch`."""
        order = torch.randperm(len(self.chunk_rows), generator=self._generator(epoch)).tolist()
        groups, current, rows = [], [], 0
        for i in order:
            if current and rows + self.chunk_rows[i] > self.buffer_rows:
                groups.append(current)
                current, rows = [], 0
            current.append(i)
            rows += self.chunk_rows[i]
        if current:
            groups.append(current)
        return groups

    def batches_in(self, group: list[int]) -> int:
        return sum(self.chunk_rows[i] for i in group) // self.batch_size

    def batches_per_epoch(self, epoch: int = 0) -> int:
        return sum(self.batches_in(g) for g in self.groups(epoch))

    def __iter__(self) -> Iterator[Rows]:
        return self.iterate()

    def iterate(self, start: int = 0) -> Iterator[Rows]:
        """Batches from global batch index `start` on (earlier ones skipped without reading)."""
        if sum(self.chunk_rows) < self.batch_size:
            raise ValueError(f"only {sum(self.chunk_rows)} rows for batches of {self.batch_size}")
        epoch, seen = 0, 0
        buffer: Rows | None = None
        while True:
            for gi, group in enumerate(self.groups(epoch)):
                n = self.batches_in(group)
                if seen + n <= start:
                    seen += n
                    continue
                rows = perm = None  # drop the previous group before loading the next
                rows, buffer = self._load_group(group, buffer)
                perm = torch.randperm(rows[0].shape[0], generator=self._generator(epoch, gi, 1))
                for b in range(max(0, start - seen), n):
                    idx = perm[b * self.batch_size:(b + 1) * self.batch_size]
                    yield tuple(t[idx] for t in rows)
                seen += n
            epoch += 1

    def _load_group(self, group: list[int], buffer: Rows | None) -> tuple[Rows, Rows | None]:
        """The rows of a group in one buffer, filled chunk by chunk, and that buffer.

        With `load_into` (stores), one buffer is allocated for the whole iteration and every
        group is read straight into it: the peak is the buffer plus one chunk, once, whatever
        the number of groups and epochs. Without it, each group gets a fresh buffer (a group of
        one chunk is used as loaded, without a copy)."""
        total = sum(self.chunk_rows[i] for i in group)
        if self.load_into is None:
            if len(group) == 1:
                return self.load(group[0]), None
            buffer = None
        out = None if buffer is None or buffer[0].shape[0] < total else \
            tuple(t[:total] for t in buffer)
        at = 0
        for i in group:
            n = self.chunk_rows[i]
            if out is not None and self.load_into is not None and \
                    self.load_into(i, tuple(o[at:at + n] for o in out)):
                at += n
                continue
            part = self.load(i)
            if part[0].shape[0] != n:
                raise ValueError(f"chunk {i} holds {part[0].shape[0]} rows, expected {n}")
            if out is None:
                size = total
                if self.load_into is not None:  # room for the largest group of any epoch
                    size = max(total, min(self.buffer_rows, sum(self.chunk_rows)))
                buffer = out = None
                buffer = tuple(torch.empty((size, *t.shape[1:]), dtype=t.dtype) for t in part)
                out = tuple(t[:total] for t in buffer)
            for o, t in zip(out, part):
                o[at:at + n].copy_(t)
            at += n
            del part
        return out, buffer


def tensor_batches(data: Tensor | Rows, batch_size: int, seed: int = 0,
                   chunk_rows: int = 1 << 20) -> ShuffledBatches:
    """ShuffledBatches over in-memory rows (one tensor, or row-aligned tensors)."""
    rows = (data,) if isinstance(data, Tensor) else tuple(data)
    n = rows[0].shape[0]
    starts = list(range(0, n, chunk_rows))
    sizes = [min(chunk_rows, n - s) for s in starts]
    return ShuffledBatches(sizes, lambda i: tuple(t[starts[i]:starts[i] + sizes[i]] for t in rows),
                           batch_size, buffer_rows=max(n, batch_size), seed=seed)
