"""SpaDE, the Sparsemax Distance Encoder (Hindupur, Lubana, Fel and Ba 2025, "Projecting
Assumptions: The Duality Between Sparse Autoencoders and Concept Geometry").

The paper reads every SAE encoder as a projection onto a constraint set, and the shape of that set
as an assumption about how concepts sit in the data: a ReLU or JumpReLU latent fires on a half
space (concepts must be linearly separable), a TopK SAE gives every input the same number of
latents (concepts must share one intrinsic dimension). SpaDE projects distances instead:

    codes = sparsemax(-lambda * ||x - p_i||^2 for each prototype p_i),  x_hat = codes @ W_dec

and trains with the reconstruction error plus a distance-weighted L1 penalty,

    loss = ||x - x_hat||^2 + gamma * sum_i codes_i * ||x - p_i||^2   (batch mean),

which charges each unit of code mass by how far its prototype is from the input, so a larger
gamma concentrates the mass on the nearest prototypes (fewer active latents). Sparsemax is the
Euclidean projection onto the probability simplex: codes are non-negative, sum to one, have exact
zeros, and their number varies with the input. Relative to TopK: distance scores instead of dot
products, a simplex projection instead of "k largest, then ReLU", and sparsity set by gamma and
the learned lambda instead of k.

As in the authors' reference, Sai-Sumedh/SaeConceptDuality-SpaDE (`models.py`, SAE with
sae_type "sparsemax_dist"; `functions/train_test.py`, regularizer "dist_weighted_l1";
`experiments/expt_heterogeneity/settings.txt` and `trainmodel.py`):
- lambda = softplus(lambda_pre), learned, initialised at 1/(2d). The reference trains on data
  standardised to mean 0 and mean squared norm d; the same initial scores on any data need
  lambda = 1/(2 * E||x - mean||^2), which is what `init_from_data` sets (exactly 1/(2d) on the
  reference's standardised data, 1/2 on saelab.fit's unit-mean-squared-norm inputs). Without
  data (the constructor alone) lambda is the literal 1/(2 d_in). `init_scale` overrides both.
- Random initialisation (`init="random"`, the reference's "random" weight_init of the
  heterogeneity and separability experiments): prototypes N(0, 1) per coordinate and the decoder
  atoms equal to them (the reference's Ad = Ae^T). `init_from_data` puts that draw in the data's
  units: prototypes = mean + N(0, E||x - mean||^2 / d) (on standardised data, the reference's
  N(0, 1) draw). `init="data"` puts prototypes and atoms on data rows (the reference's "data"
  weight_init), plus saelab's small noise to separate repeats.
- The penalty uses the encoder's prototypes (the experiments' `encoder_reg = True`), weight
  `gamma`, default 0.1 (the experiments' default; their sweeps run 1e-3 to 10).
- No decoder renormalisation (`normalize_decoder` False for SpaDE there).
Departures: b_dec exists (saelab's contract) and starts at 0; since codes sum to one it only
shifts every atom alike, so the function class is the reference's. The reference's Adam at
lr 1e-2, cosine decay to 1e-4 and gradient clipping at norm 1 belong to its trainer: pass
TrainConfig(lr=..., grad_clip=1.0) for them (saelab's schedule is warm-up then linear decay).
Distances are computed as ||x||^2 - 2 x.p + ||p||^2 from one dense product (the reference
materialises [B, n_latents, d]); the gradient is dense, so a step costs about a ReLU SAE's.

saelab's earlier form, before the penalty existed, is gamma=0 with init="data".
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from saelab.config import check, option
from saelab.dictionaries._base import (
    Dictionary,
    DictionaryConfig,
    Loss,
    StepState,
    fvu,
    squared_error,
)
from saelab.dictionaries._registry import register
from saelab.ops.sparsemax import sparsemax

INITS = ("random", "data")


@dataclass
class SpaDEConfig(DictionaryConfig):
    gamma: float = option(0.1, "Weight of the distance-weighted L1 penalty gamma * sum_i "
                               "code_i * ||x - p_i||^2 (larger: fewer active latents).")
    init_scale: float | None = option(None, "Initial lambda, the scale of the squared "
                                            "distances; default the reference's 1/(2d), "
                                            "put in the data's units (see the module).")
    learn_scale: bool = option(True, "Learn lambda by gradient (else it stays at its initial "
                                     "value).")
    init: Literal["random", "data"] = option(
        "random", "Prototype initialisation: random (the reference's: Gaussian at the data's "
                  "scale, atoms equal to prototypes) or data (on data rows).")
    init_noise: float = option(0.01, "Noise added to the data rows of init=data, relative to "
                                     "their RMS norm.")

    def __post_init__(self) -> None:
        super().__post_init__()
        check(isinstance(self.gamma, (int, float)) and 0 <= self.gamma < float("inf"), "gamma",
              f"must be a finite number >= 0, got {self.gamma!r}")
        check(self.init_scale is None or (isinstance(self.init_scale, (int, float))
                                          and 0 < self.init_scale < float("inf")),
              "init_scale", f"must be a positive finite number, got {self.init_scale!r}")
        check(isinstance(self.learn_scale, bool), "learn_scale",
              f"must be true or false, got {self.learn_scale!r}")
        check(self.init in INITS, "init", f"must be one of {', '.join(INITS)}, got {self.init!r}")
        check(isinstance(self.init_noise, (int, float)) and self.init_noise >= 0, "init_noise",
              f"must be >= 0, got {self.init_noise!r}")


def softplus_inverse(y: float) -> float:
    """The x with softplus(x) = log(1 + e^x) = y, for y > 0."""
    return y + math.log(-math.expm1(-y))


@register("spade")
class SpaDE(Dictionary):
    """Sparsemax distance encoder. Weights: W_enc [n_latents, d_in] (prototypes), lambda_pre []
    (lambda = softplus(lambda_pre)), W_dec [n_latents, d_out], b_dec [d_out]."""

    Config = SpaDEConfig
    unit_norm_decoder = False
    scales_with_input = ("W_enc", "W_dec", "b_dec")

    def __init__(self, cfg: SpaDEConfig):
        super().__init__(cfg)
        protos = torch.randn(cfg.n_latents, cfg.d_in)
        self.W_enc = nn.Parameter(protos)
        self.W_dec = nn.Parameter(protos.clone() if cfg.d_in == cfg.d_out
                                  else torch.randn(cfg.n_latents, cfg.d_out))
        self.b_dec = nn.Parameter(torch.zeros(cfg.d_out))
        scale = cfg.init_scale if cfg.init_scale is not None else 1 / (2 * cfg.d_in)
        self.lambda_pre = nn.Parameter(torch.tensor(softplus_inverse(scale)),
                                       requires_grad=cfg.learn_scale)

    @property
    def scale(self) -> Tensor:
        """lambda = softplus(lambda_pre) [] (positive)."""
        return F.softplus(self.lambda_pre)

    def squared_distances(self, x: Tensor) -> Tensor:
        """||x_b - p_i||^2 [B, n_latents] (clamped at 0 against rounding)."""
        cross = x @ self.W_enc.t()  # [B, n_latents]
        return (x.pow(2).sum(-1, keepdim=True) - 2 * cross
                + self.W_enc.pow(2).sum(-1)).clamp_min(0)

    def encode(self, x: Tensor) -> Tensor:
        return sparsemax(-self.scale * self.squared_distances(x))

    def loss(self, x: Tensor, state: StepState, target: Tensor | None = None) -> Loss:
        target = x if target is None else target
        dist = self.squared_distances(x)  # [B, n_latents]
        codes = sparsemax(-self.scale * dist)
        x_hat = codes @ self.W_dec + self.b_dec
        mse = squared_error(x_hat, target).mean()
        penalty = (codes * dist).sum(-1).mean()  # distance-weighted L1 on the prototypes
        fired = codes.detach() > 0
        metrics = {"fvu": fvu(x_hat.detach(), target).item(),
                   "l0": fired.sum(-1).float().mean().item(),
                   "scale": float(self.scale.detach())}
        return Loss(mse + self.cfg.gamma * penalty, {"mse": mse, "distance_l1": penalty},
                    metrics, fired.any(0))

    @torch.no_grad()
    def init_from_data(self, x: Tensor) -> None:
        """The initialisation of `cfg.init` in the units of the sample `x` [N, d_in], and lambda
        at 1/(2 E||x - mean||^2) unless `init_scale` is set (see the module docstring). Needs
        inputs, so transcoders keep the constructor's."""
        if x.shape[-1] != self.d_in or self.d_in != self.d_out or x.shape[0] < 2:
            return super().init_from_data(x)
        n, mean = self.n_latents, x.mean(0)
        spread = (x - mean).pow(2).sum(-1).mean()  # E||x - mean||^2
        if self.cfg.init == "random":
            protos = mean + (spread / self.d_in).sqrt() * torch.randn(n, self.d_in)
        else:
            rows = (torch.randperm(x.shape[0])[:n] if x.shape[0] >= n
                    else torch.randint(x.shape[0], (n,)))
            rms = x.pow(2).sum(-1).mean().sqrt()
            protos = x[rows] + self.cfg.init_noise * rms / math.sqrt(self.d_in) * torch.randn(
                n, self.d_in)
        self.W_enc.copy_(protos)
        self.W_dec.copy_(protos)
        self.b_dec.zero_()
        if self.cfg.init_scale is None and spread > 0:
            self.lambda_pre.fill_(softplus_inverse(float(1 / (2 * spread))))

    @torch.no_grad()
    def fold_input_scale(self, scale: float) -> None:
        """Prototypes, atoms and b_dec divide by the scale; squared distances shrink by scale^2,
        so lambda grows by scale^2 (codes unchanged)."""
        super().fold_input_scale(scale)
        self.lambda_pre.fill_(softplus_inverse(float(self.scale) * scale ** 2))
