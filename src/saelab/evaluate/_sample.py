"""A bounded uniform sample of the rows of the activation stream, for families whose figures need
rows together (a regression, Gram matrices) but must keep memory bounded whatever the data's
size."""

from __future__ import annotations

import torch
from torch import Tensor


class RowSample:
    """Reservoir sampling by random keys: every row seen gets a uniform random key (from torch's
    RNG, which `evaluate` seeds) and the `cap` rows with the smallest keys are kept, so the rows
    kept are a uniform sample without replacement of all rows seen, in random order.

    `add(x, e, ...)` takes one batch as columns with the same number of rows; `columns()`
    returns the kept rows of each column (None before any row)."""

    def __init__(self, cap: int) -> None:
        if cap < 1:
            raise ValueError(f"a row sample holds at least one row, got cap={cap}")
        self.cap = cap
        self.seen = 0
        """Rows seen so far."""
        self._keys: Tensor | None = None  # [<= cap]
        self._columns: list[Tensor] = []  # each [<= cap, ...]

    def add(self, *columns: Tensor) -> None:
        """Offer the rows of one batch (each column [B, ...], the same B)."""
        n = columns[0].shape[0]
        self.seen += n
        keys = torch.rand(n)
        columns = [c.detach() for c in columns]
        if self._keys is not None:
            keys = torch.cat([self._keys, keys])
            columns = [torch.cat([old, new.to(old)]) for old, new in zip(self._columns, columns)]
        if len(keys) > self.cap:
            keep = keys.topk(self.cap, largest=False).indices
            keys, columns = keys[keep], [c[keep.to(c.device)] for c in columns]
        self._keys, self._columns = keys, columns

    def columns(self) -> tuple[Tensor, ...] | None:
        """The kept rows of each column, in the (random) order of their keys; None when empty."""
        if self._keys is None:
            return None
        order = self._keys.argsort()
        return tuple(c[order.to(c.device)] for c in self._columns)

    def __len__(self) -> int:
        return 0 if self._keys is None else len(self._keys)
