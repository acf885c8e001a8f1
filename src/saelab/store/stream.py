"""Streaming activations straight from a model into training, without touching disk.

A rolling buffer is filled by capturing contexts; once full, it is shuffled and half of it is
served as batches while the rest stays to mix with the next contexts. Deterministic under a
seed; after the last context the buffer is drained. One pass over the contexts.

Several hookpoints are captured from the same forward: each batch then holds one row-aligned
tensor per hookpoint (rows are the same token positions at every hookpoint).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch import Tensor, nn

from saelab.capture import BATCH_CONTEXTS, Capture
from saelab.capture.exclude import NORM_FACTOR, Exclusion
from saelab.errors import DataError


def stream_batches(model: nn.Module, tokens: Tensor, hookpoint: str | Sequence[str],
                   batch_size: int, *, buffer_rows: int = 1 << 16, batch_contexts: int = BATCH_CONTEXTS,
                   special_ids: list[int] | None = None, norm_factor: float | None = NORM_FACTOR,
                   seed: int = 0) -> Iterator[tuple[Tensor, ...]]:
    """Shuffled batches captured on the fly from `tokens` [N, T]: `(acts [batch_size, d],)` for
    one hookpoint, or one row-aligned tensor per hookpoint, in model order (the order of
    `saelab.capture.resolve(model, hookpoints)`), when `hookpoint` is a list. One forward per
    `batch_contexts` contexts, stopped after the last hookpoint."""
    specs = [hookpoint] if isinstance(hookpoint, str) else list(hookpoint)
    exclusion = Exclusion(sorted(special_ids or []), norm_factor)
    g = torch.Generator().manual_seed(seed)
    buffer: list[tuple[Tensor, ...]] = []
    held = 0
    with Capture(model, specs) as cap:
        keys = [hp.key for hp in cap.hookpoints]
        for start in range(0, tokens.shape[0], batch_contexts):
            batch = tokens[start:start + batch_contexts]
            acts = cap.run(input_ids=batch)
            for key in keys:
                if not torch.isfinite(acts[key]).all():
                    raise DataError(f"non-finite activations (NaN or inf) at hookpoint {key!r} "
                                    f"in contexts {start}-{start + len(batch) - 1}")
            exclusion.calibrate(batch, acts)
            keep = exclusion.keep_mask(batch, acts)
            rows = tuple(acts[key][keep].float() for key in keys)
            buffer.append(rows)
            held += rows[0].shape[0]
            if held >= buffer_rows:
                pool = _shuffled(buffer, g)
                serve = (pool[0].shape[0] // 2) // batch_size * batch_size
                for s in range(0, serve, batch_size):
                    yield tuple(t[s:s + batch_size] for t in pool)
                buffer = [tuple(t[serve:] for t in pool)]
                held = pool[0].shape[0] - serve
    if buffer:
        pool = _shuffled(buffer, g)
        for s in range(0, pool[0].shape[0] - batch_size + 1, batch_size):
            yield tuple(t[s:s + batch_size] for t in pool)


def _shuffled(buffer: list[tuple[Tensor, ...]], g: torch.Generator) -> tuple[Tensor, ...]:
    """The buffered rows of every hookpoint concatenated, under one shared permutation."""
    pool = tuple(torch.cat(parts) for parts in zip(*buffer))
    perm = torch.randperm(pool[0].shape[0], generator=g)
    return tuple(t[perm] for t in pool)
