"""Sparsity: how many latents an input uses, and how often each latent fires."""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import torch
from torch import Tensor

from saelab.evaluate._base import Context, Family
from saelab.evaluate._registry import register
from saelab.evaluate._report import histogram

DENSE_FREQUENCY = 0.1
"""A latent firing on more than this fraction of inputs counts as dense."""


@register("sparsity")
class Sparsity(Family):
    """Active latents per input and firing frequency per latent, streamed over the activations.

    - `l0`: mean number of nonzero codes per input;
    - `dead_fraction`: fraction of latents that never fired on the evaluated data;
    - `dense_fraction`: fraction of latents that fired on more than 10% of it;
    - `n_inputs`: number of inputs evaluated.

    Plots: `l0_hist.png` (L0 per input) and `density_hist.png` (log10 firing frequency of the
    live latents).
    """

    needs = frozenset({"activations"})
    figures = ("l0", "dead_fraction", "dense_fraction", "n_inputs")
    headline = ("l0", "dead_fraction", "dense_fraction")

    def __init__(self, context: Context) -> None:
        super().__init__(context)
        self.n = 0
        self.fires = torch.zeros(context.dictionary.n_latents, dtype=torch.long)
        self.l0_counts: list[Tensor] = []

    def update(self, x: Tensor, target: Tensor, output: NamedTuple) -> None:
        active = output.codes != 0  # [B, n_latents]
        self.n += active.shape[0]
        self.fires += active.sum(0).cpu()
        self.l0_counts.append(active.sum(-1).cpu().int())

    def frequencies(self) -> Tensor:
        """Firing frequency of each latent [n_latents]."""
        return self.fires.double() / max(1, self.n)

    def l0_per_input(self) -> Tensor:
        """Number of active latents of each input [n_inputs]."""
        return torch.cat(self.l0_counts) if self.l0_counts else torch.zeros(0, dtype=torch.int)

    def result(self) -> dict[str, float]:
        freq = self.frequencies()
        return {"l0": float(self.l0_per_input().float().mean()) if self.n else float("nan"),
                "dead_fraction": float((self.fires == 0).double().mean()),
                "dense_fraction": float((freq > DENSE_FREQUENCY).double().mean()),
                "n_inputs": self.n}

    def plot(self, out: Path) -> list[Path]:
        paths = []
        l0 = self.l0_per_input()
        if l0.numel():
            paths.append(histogram(out / "l0_hist.png", l0.float().numpy(),
                                   "active latents per input (L0)", "inputs",
                                   bins=min(60, int(l0.max()) + 1)))
        freq = self.frequencies()
        live = freq[freq > 0]
        if live.numel():
            paths.append(histogram(out / "density_hist.png", torch.log10(live).numpy(),
                                   f"log10 firing frequency ({int((freq == 0).sum())} dead "
                                   f"latents not shown)", "latents", bins=50))
        return paths
