"""Sparsity metrics: L0, firing frequency per latent, dead and dense fractions."""

from __future__ import annotations

import torch
from torch import Tensor

from saelab.evaluate._registry import register

DENSE_FREQUENCY = 0.1
"""A latent firing on more than this fraction of inputs counts as dense."""


@register("sparsity")
class Sparsity:
    """Streaming L0 (mean active latents per input) and per-latent firing counts; dead = never
    fired on the evaluated data, dense = fired on more than 10% of it."""

    def __init__(self, dictionary):
        self.n = 0
        self.fires = torch.zeros(dictionary.n_latents, dtype=torch.long)
        self.l0_counts: list[Tensor] = []

    def update(self, x: Tensor, x_hat: Tensor, codes: Tensor) -> None:
        active = codes != 0
        self.n += codes.shape[0]
        self.fires += active.sum(0).cpu()
        self.l0_counts.append(active.sum(-1).cpu().int())

    def frequencies(self) -> Tensor:
        return self.fires.double() / max(1, self.n)

    def l0_per_input(self) -> Tensor:
        return torch.cat(self.l0_counts) if self.l0_counts else torch.zeros(0, dtype=torch.int)

    def result(self) -> dict[str, float]:
        freq = self.frequencies()
        return {"l0": float(self.l0_per_input().float().mean()) if self.n else float("nan"),
                "dead_fraction": float((self.fires == 0).double().mean()),
                "dense_fraction": float((freq > DENSE_FREQUENCY).double().mean()),
                "n_inputs": self.n}
