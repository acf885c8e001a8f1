"""Optimiser and learning-rate schedule: Adam with linear warm-up and linear decay to zero."""

from __future__ import annotations

import torch


def make_optimizer(params, lr: float, betas: tuple[float, float] = (0.9, 0.999),
                   eps: float = 1e-8) -> torch.optim.Adam:
    """Adam over `params`, with the fused kernel (one pass over each tensor)."""
    return torch.optim.Adam(list(params), lr=lr, betas=betas, eps=eps, fused=True)


def lr_factor(step: int, total: int, warmup: int, decay_start: float) -> float:
    """Multiplier of the base lr at `step`: linear warm-up over `warmup` steps, constant, then
    linear decay to zero over the last (1 - decay_start) fraction of `total` steps."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    start = int(decay_start * total)
    if step >= start and total > start:
        return max(0.0, (total - step) / (total - start))
    return 1.0
