"""Reconstruction: how close the dictionary's output is to what it should reproduce."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from saelab.evaluate._base import Context, Family
from saelab.evaluate._registry import register


@register("reconstruction")
class Reconstruction(Family):
    """How well the output reproduces its target (the input itself for an SAE, the target
    activation for a transcoder), streamed over the activations in float64.

    - `mse`: mean over inputs of the squared error summed over dimensions;
    - `fvu`: fraction of variance unexplained, the summed squared error over the total variance
      of the target around its per-dimension mean on the evaluated data;
    - `explained_variance`: 1 - fvu;
    - `cosine`: mean cosine similarity of target and output;
    - `l2_ratio`: mean ratio of norms ||output|| / ||target||.
    """

    needs = frozenset({"activations"})
    figures = ("mse", "fvu", "explained_variance", "cosine", "l2_ratio")
    headline = ("fvu", "cosine")

    def __init__(self, context: Context) -> None:
        super().__init__(context)
        self.n = 0
        self.sq_err = 0.0
        self.sum_x: Tensor | None = None  # [d_out]
        self.sum_sq = 0.0
        self.cos = 0.0
        self.ratio = 0.0

    def update(self, x: Tensor, target: Tensor, output: NamedTuple) -> None:
        y, y_hat = target.double(), output.x_hat.double()
        self.n += y.shape[0]
        self.sq_err += float((y_hat - y).pow(2).sum())
        self.sum_x = y.sum(0) if self.sum_x is None else self.sum_x + y.sum(0)
        self.sum_sq += float(y.pow(2).sum())
        norms = y.norm(dim=-1).clamp_min(1e-12)
        self.cos += float(torch.nn.functional.cosine_similarity(y, y_hat, dim=-1).sum())
        self.ratio += float((y_hat.norm(dim=-1) / norms).sum())

    def result(self) -> dict[str, float]:
        n = max(1, self.n)
        total_var = (self.sum_sq - float(self.sum_x.pow(2).sum()) / n
                     if self.sum_x is not None else 0.0)
        fvu = self.sq_err / total_var if total_var > 0 else float("nan")
        return {"mse": self.sq_err / n if self.n else float("nan"), "fvu": fvu,
                "explained_variance": 1 - fvu, "cosine": self.cos / n if self.n else float("nan"),
                "l2_ratio": self.ratio / n if self.n else float("nan")}
