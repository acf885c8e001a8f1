"""Reconstruction metrics: MSE, fraction of variance unexplained, cosine, l2 ratio."""

from __future__ import annotations

import torch
from torch import Tensor

from saelab.evaluate._registry import register


@register("reconstruction")
class Reconstruction:
    """Streaming MSE, FVU (against the per-dimension mean of the evaluated data), mean cosine
    similarity of x and x_hat, and mean norm ratio ||x_hat|| / ||x||."""

    def __init__(self, dictionary):
        self.n = 0
        self.sq_err = 0.0
        self.sum_x: Tensor | None = None
        self.sum_sq = 0.0
        self.cos = 0.0
        self.ratio = 0.0

    def update(self, x: Tensor, x_hat: Tensor, codes: Tensor) -> None:
        x, x_hat = x.double(), x_hat.double()
        self.n += x.shape[0]
        self.sq_err += float((x_hat - x).pow(2).sum())
        self.sum_x = x.sum(0) if self.sum_x is None else self.sum_x + x.sum(0)
        self.sum_sq += float(x.pow(2).sum())
        norms = x.norm(dim=-1).clamp_min(1e-12)
        self.cos += float(torch.nn.functional.cosine_similarity(x, x_hat, dim=-1).sum())
        self.ratio += float((x_hat.norm(dim=-1) / norms).sum())

    def result(self) -> dict[str, float]:
        n = max(1, self.n)
        total_var = self.sum_sq - float(self.sum_x.pow(2).sum()) / n if self.sum_x is not None \
            else 0.0
        fvu = self.sq_err / total_var if total_var > 0 else float("nan")
        return {"mse": self.sq_err / n, "fvu": fvu, "explained_variance": 1 - fvu,
                "cosine": self.cos / n, "l2_ratio": self.ratio / n}
