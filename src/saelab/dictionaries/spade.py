"""SpaDE, the Sparsemax Distance Encoder (Hindupur, Lubana, Fel and Ba 2025, "Projecting
Assumptions: The Duality Between Sparse Autoencoders and Concept Geometry").

The paper reads every SAE encoder as a projection onto a constraint set, and the shape of that set
as an assumption about how concepts sit in the data: a ReLU or JumpReLU latent fires on a half
space (concepts must be linearly separable), a TopK SAE gives every input the same number of
latents (concepts must share one intrinsic dimension). SpaDE projects distances instead:

    codes = sparsemax(-lambda * ||x - p_i||^2 for each prototype p_i)

The prototypes p_i (rows of `W_enc`, points in input space) and the scale lambda are learned;
sparsemax is the Euclidean projection onto the probability simplex, so every input's codes are
non-negative, sum to one, and have exact zeros. A latent's receptive field is a region around its
prototype bounded by the other prototypes (a local, not a half-space, region), and the number of
active latents varies with the input: few inside a compact concept, more where the data spreads
over more dimensions. Relative to TopK: distance scores instead of dot products, and a simplex
projection instead of "k largest, then ReLU".

Where this file had to choose:
- Decoder: x_hat = codes @ W_dec + b_dec. Codes sum to one, so magnitude has to live in the
  decoder rows: `unit_norm_decoder` is False (the rows of W_dec are free). b_dec is kept, as in
  every saelab dictionary, so x_hat is the data mean plus a convex combination of atoms.
- lambda is one learned scalar, stored as its logarithm (`log_scale`) so it stays positive; its
  initial value is `init_scale` (in the units of inputs normalised to unit mean squared norm,
  which is how saelab.fit trains). The paper learns it too; the parametrisation is ours.
- Initialisation: `init_from_data` puts the prototypes on data rows (a random draw, with
  replacement where the sample is smaller than n_latents, plus a little noise to separate
  repeats) and each decoder row on its prototype minus the mean, so at the start an input close
  to a prototype is reconstructed by that prototype's atom. Without data (before
  `init_from_data`), prototypes and atoms are random unit rows, as in the other variants.
- No sparsity penalty is added: sparsemax's exact zeros and lambda set the sparsity (a larger
  lambda spreads the scores further apart and so leaves fewer latents above the threshold).
  No AuxK either: a latent whose prototype is far from all data never fires and gets no gradient.
- Distances are computed as ||x||^2 - 2 x.p + ||p||^2 from one dense product; the gradient is
  dense ([B, n_latents]), so this variant costs about a ReLU SAE's step, not a TopK SAE's sparse
  one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from saelab.config import check, option
from saelab.dictionaries._base import (
    Dictionary,
    DictionaryConfig,
    Loss,
    StepState,
    fvu,
    squared_error,
    unit_rows,
)
from saelab.dictionaries._registry import register
from saelab.ops.sparsemax import sparsemax


@dataclass
class SpaDEConfig(DictionaryConfig):
    init_scale: float = option(1.0, "Initial lambda, the scale of the squared distances "
                                    "before sparsemax (larger: fewer active latents).")
    learn_scale: bool = option(True, "Learn lambda by gradient (else it stays at init_scale).")
    init_noise: float = option(0.01, "Noise added to the data rows that initialise the "
                                     "prototypes, relative to their RMS norm.")

    def __post_init__(self) -> None:
        super().__post_init__()
        check(isinstance(self.init_scale, (int, float)) and 0 < self.init_scale < float("inf"),
              "init_scale", f"must be a positive finite number, got {self.init_scale!r}")
        check(isinstance(self.learn_scale, bool), "learn_scale",
              f"must be true or false, got {self.learn_scale!r}")
        check(isinstance(self.init_noise, (int, float)) and self.init_noise >= 0, "init_noise",
              f"must be >= 0, got {self.init_noise!r}")


@register("spade")
class SpaDE(Dictionary):
    """Sparsemax distance encoder. Weights: W_enc [n_latents, d_in] (prototypes), log_scale []
    (log lambda), W_dec [n_latents, d_out], b_dec [d_out]."""

    Config = SpaDEConfig
    unit_norm_decoder = False
    scales_with_input = ("W_enc", "W_dec", "b_dec")

    def __init__(self, cfg: SpaDEConfig):
        super().__init__(cfg)
        self.W_enc = nn.Parameter(unit_rows(cfg.n_latents, cfg.d_in))
        self.W_dec = nn.Parameter(unit_rows(cfg.n_latents, cfg.d_out))
        self.b_dec = nn.Parameter(torch.zeros(cfg.d_out))
        self.log_scale = nn.Parameter(torch.tensor(math.log(cfg.init_scale)),
                                      requires_grad=cfg.learn_scale)

    def squared_distances(self, x: Tensor) -> Tensor:
        """||x_b - p_i||^2 [B, n_latents] (clamped at 0 against rounding)."""
        cross = x @ self.W_enc.t()  # [B, n_latents]
        return (x.pow(2).sum(-1, keepdim=True) - 2 * cross
                + self.W_enc.pow(2).sum(-1)).clamp_min(0)

    def encode(self, x: Tensor) -> Tensor:
        return sparsemax(-self.log_scale.exp() * self.squared_distances(x))

    def loss(self, x: Tensor, state: StepState, target: Tensor | None = None) -> Loss:
        target = x if target is None else target
        codes = self.encode(x)
        x_hat = codes @ self.W_dec + self.b_dec
        mse = squared_error(x_hat, target).mean()
        fired = codes.detach() > 0
        metrics = {"fvu": fvu(x_hat.detach(), target).item(),
                   "l0": fired.sum(-1).float().mean().item(),
                   "scale": float(self.log_scale.detach().exp())}
        return Loss(mse, {"mse": mse}, metrics, fired.any(0))

    @torch.no_grad()
    def init_from_data(self, x: Tensor) -> None:
        """Prototypes on (noisy) data rows, atoms on the same rows minus the mean, b_dec on the
        mean (see the module docstring). Needs inputs, so transcoders keep the random init."""
        if x.shape[-1] != self.d_in or self.d_in != self.d_out or x.shape[0] == 0:
            return super().init_from_data(x)
        n = self.n_latents
        rows = (torch.randperm(x.shape[0])[:n] if x.shape[0] >= n
                else torch.randint(x.shape[0], (n,)))
        rms = x.pow(2).sum(-1).mean().sqrt()
        picked = x[rows] + self.cfg.init_noise * rms / math.sqrt(self.d_in) * torch.randn(
            n, self.d_in)
        mean = x.mean(0)
        self.W_enc.copy_(picked)
        self.b_dec.copy_(mean)
        self.W_dec.copy_(picked - mean)

    @torch.no_grad()
    def fold_input_scale(self, scale: float) -> None:
        """Prototypes, atoms and b_dec divide by the scale; squared distances shrink by scale^2,
        so lambda grows by scale^2 (codes unchanged)."""
        super().fold_input_scale(scale)
        self.log_scale.add_(2 * math.log(scale))
