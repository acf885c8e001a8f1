"""Streaming activations straight from a model into training, without touching disk.

A rolling buffer is filled by capturing contexts; once full, it is shuffled and half of it is
served as batches while the rest stays to mix with the next contexts. Deterministic under a
seed; after the last context the buffer is drained. One pass over the contexts.
"""

from __future__ import annotations

from typing import Iterator

import torch
from torch import Tensor, nn

from saelab.capture import Capture
from saelab.capture.exclude import Exclusion
from saelab.errors import DataError


def stream_batches(model: nn.Module, tokens: Tensor, hookpoint: str, batch_size: int, *,
                   buffer_rows: int = 1 << 16, batch_contexts: int = 8,
                   special_ids: list[int] | None = None, norm_factor: float | None = 5.0,
                   seed: int = 0) -> Iterator[tuple[Tensor]]:
    """Shuffled (acts [batch_size, d],) batches captured on the fly from `tokens` [N, T]."""
    exclusion = Exclusion(sorted(special_ids or []), norm_factor)
    g = torch.Generator().manual_seed(seed)
    buffer: list[Tensor] = []
    held = 0
    with Capture(model, [hookpoint]) as cap:
        key = cap.hookpoints[0].key
        for start in range(0, tokens.shape[0], batch_contexts):
            batch = tokens[start:start + batch_contexts]
            acts = cap.run(input_ids=batch)
            if not torch.isfinite(acts[key]).all():
                raise DataError(f"non-finite activations (NaN or inf) at hookpoint {key!r} in "
                                f"contexts {start}-{start + len(batch) - 1}")
            exclusion.calibrate(batch, acts)
            rows = acts[key][exclusion.keep_mask(batch, acts)].float()
            buffer.append(rows)
            held += rows.shape[0]
            if held >= buffer_rows:
                pool = torch.cat(buffer)
                pool = pool[torch.randperm(pool.shape[0], generator=g)]
                serve = (pool.shape[0] // 2) // batch_size * batch_size
                for s in range(0, serve, batch_size):
                    yield (pool[s:s + batch_size],)
                buffer, held = [pool[serve:]], pool.shape[0] - serve
    if buffer:
        pool = torch.cat(buffer)
        pool = pool[torch.randperm(pool.shape[0], generator=g)]
        for s in range(0, pool.shape[0] - batch_size + 1, batch_size):
            yield (pool[s:s + batch_size],)
