"""Sparsemax: the Euclidean projection of each row onto the probability simplex (Martins and
Astudillo 2016, "From Softmax to Sparsemax").

sparsemax(s) = argmin_{p >= 0, sum p = 1} ||p - s||^2 = max(s - tau, 0), with tau the one
threshold per row that makes the result sum to one. Unlike softmax it gives exact zeros: the
entries at or below tau are 0, so the output is a sparse code whose support size adapts to the
row. The backward pass only needs the support: on it the Jacobian is I - 1 1^T / |S|, elsewhere 0.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor


class Simplex(NamedTuple):
    """A projection onto the simplex, row by row."""

    probs: Tensor
    """The projected rows [B, n]: non-negative, each summing to 1, exact zeros off the support."""
    tau: Tensor
    """The threshold of each row [B, 1] (probs = max(s - tau, 0))."""


def sparsemax_threshold(scores: Tensor) -> Tensor:
    """tau [B, 1] for scores [B, n]: with s sorted decreasingly, the support size is the largest
    j with 1 + j s_(j) > sum_{i <= j} s_(i), and tau = (sum of the support - 1) / j."""
    z = scores - scores.max(dim=-1, keepdim=True).values  # shift for accuracy; tau shifts too
    s, _ = z.sort(dim=-1, descending=True)  # [B, n]
    j = torch.arange(1, s.shape[-1] + 1, device=s.device, dtype=s.dtype)  # [n]: 1..n
    cumulative = s.cumsum(dim=-1)  # [B, n]
    in_support = 1 + j * s > cumulative  # true on a prefix of the sorted row (always at j = 1)
    size = in_support.sum(dim=-1, keepdim=True)  # [B, 1]
    tau = (cumulative.gather(-1, size - 1) - 1) / size.to(s.dtype)
    return tau + scores.max(dim=-1, keepdim=True).values


class _Sparsemax(torch.autograd.Function):
    @staticmethod
    def forward(ctx, scores: Tensor) -> Tensor:
        probs = (scores - sparsemax_threshold(scores)).clamp_min(0)
        ctx.save_for_backward(probs)
        return probs

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        (probs,) = ctx.saved_tensors
        support = probs > 0
        # on the support: grad minus its mean over the support; zero elsewhere
        mean = (grad * support).sum(-1, keepdim=True) / support.sum(-1, keepdim=True)
        return torch.where(support, grad - mean, torch.zeros_like(grad))


def sparsemax(scores: Tensor) -> Tensor:
    """Project each row of scores [B, n] onto the probability simplex (exact zeros off the
    support); differentiable."""
    return _Sparsemax.apply(scores)
