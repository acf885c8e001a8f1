"""JumpReLU SAE (Rajamanoharan et al. 2024, "Jumping Ahead: Improving Reconstruction Fidelity
with JumpReLU Sparse Autoencoders").

Instead of keeping the k largest pre-activations, each latent i has its own learned threshold
theta_i: z_i = pre_i * H(pre_i - theta_i), so a latent is either off (exactly zero) or passes its
pre-activation unchanged. The loss is MSE + lambda * L0. Neither the step H nor the L0 has a
useful gradient, so theta (stored as `log_threshold`, theta = exp(log_threshold)) is trained with
the paper's straight-through pseudo-derivatives, a rectangle kernel K of width eps
(`bandwidth`), K(u) = 1 for |u| < 1/2:

    d JumpReLU_theta(pre) / d theta := -(theta / eps) K((pre - theta) / eps)
    d H(pre - theta) / d theta      := -(1 / eps) K((pre - theta) / eps)

Everything else gets its ordinary gradient: the output passes H(pre - theta) to the
pre-activation; the step in the L0 term passes nothing to the pre-activation, so in the step form
the sparsity penalty trains theta alone. Only samples whose pre-activation lies within eps / 2 of
the threshold move it.

Two sparsity terms (`sparsity`):
- "step" (the paper): lambda * mean over rows of sum_i H(pre_i - theta_i), the L0 itself.
- "tanh" (the sparsity term of Anthropic's JumpReLU recipe, Conerly et al., "Circuits Updates -
  January 2025"): lambda * mean over rows of sum_i tanh(c |z_i| ||W_dec_i||), c = `tanh_scale`.
  This term is differentiable in z, so it also shrinks pre-activations and decoder norms, and
  reaches theta through the JumpReLU pseudo-derivative above. The decoder rows are left free
  (the penalty weights codes by their norms), as in that recipe. Only this term is taken from
  the recipe: its other changes (straight-through gradients that also reach the
  pre-activations, its pre-activation loss, its initialisation) are not implemented; AuxK
  (`auxk_coeff`) is the dead-latent remedy here.

Where this file had to choose (inputs are normalised to unit mean squared norm by the trainer):
- The encoder reads x - b_dec (as the TopK/BatchTopK SAEs here do; the paper feeds x). The two
  are the same function class (b_enc absorbs W_enc b_dec); centring keeps a BatchTopK
  dictionary's pre-activations identical after `BatchTopK.to_inference()`.
- Defaults: lambda = 1e-3, eps = 1e-3, theta_0 = 1 / sqrt(d_in), lambda ramped up linearly over
  the first 5% of training, no AuxK (the paper has none). How they were chosen: see the notes
  above `JumpReLUConfig`.
- Decoder rows at unit norm in the step form (L0 does not see their scale, so this only removes
  the encoder/decoder scale symmetry).
- Initialisation: unit-norm random decoder rows, W_enc = W_dec^T, b_enc = 0 (the paper's).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from saelab.config import check, option
from saelab.dictionaries._base import (
    AuxKConfig,
    Dictionary,
    Loss,
    StepState,
    auxk_coeff_option,
    fvu,
    squared_error,
)
from saelab.dictionaries._formats import PLAIN, SaeLensMapping
from saelab.dictionaries._registry import register
from saelab.ops.auxk import add_auxk
from saelab.ops.jumprelu import jumprelu, jumprelu_ste, log_exact, step_ste
from saelab.ops.listed import Above, decode_above, encode_above, fired_latents

SPARSITY_FORMS = ("step", "tanh")


# Defaults, for inputs at unit mean squared norm (what the trainer feeds), and how they were chosen:
# - l0_coeff 1e-3: a latent pays its way when it removes more than lambda of squared error, i.e. a
#   fraction lambda of the mean squared norm. On SmolLM2 layer-15 residuals (576 dims, 4,608
#   latents, 240 steps of 4,096 rows) 1e-3 ends at L0 26 (held-out FVU 0.27). Planted data with
#   5 active directions per row needs far more: 3e-2 gives L0 5 (1e-1: 3.6).
# - bandwidth 1e-3: thresholds end at 0.04 (SmolLM2) to 0.1-0.3 (planted), so eps is 0.3-2.5% of
#   a threshold, and with batches of 1-4K rows a latent's window still holds a few entries most
#   steps.
# - threshold_init 1 / sqrt(d_in): the standard deviation of a pre-activation at initialisation
#   (unit encoder rows, unit mean squared inputs), so the threshold starts at the noise level of
#   random directions. Its value matters in runs of a few thousand steps: Adam moves log theta by
#   about lr per step, so theta travels a factor e^(lr x steps) at most (e^1 for 240 steps at lr
#   4e-3), and the L0 of a short run is mostly set by where theta starts. On SmolLM2 the
#   thresholds stayed within 2% of 1 / sqrt(576) = 0.042 over 240 steps.


@dataclass
class JumpReLUConfig(AuxKConfig):
    sparsity: Literal["step", "tanh"] = option(
        "step", "'step' (lambda x L0, the paper) or 'tanh' (lambda x sum tanh(c |z| ||W_dec||), "
                "Anthropic's 2025 recipe).")
    l0_coeff: float = option(1e-3, "lambda: weight of the sparsity term (inputs at unit mean "
                                   "squared norm).")
    bandwidth: float = option(1e-3, "eps: width of the rectangle kernel of the threshold's "
                                    "straight-through estimators.")
    threshold_init: float | None = option(None, "Initial threshold of every latent; default "
                                                "1 / sqrt(d_in).")
    tanh_scale: float = option(4.0, "c in tanh(c |z| ||W_dec||) (sparsity='tanh' only).")
    l0_warmup: float = option(0.05, "Fraction of training over which lambda ramps up linearly.")
    auxk_coeff: float = auxk_coeff_option(0.0)

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.sparsity in SPARSITY_FORMS, "sparsity",
              f"must be one of {', '.join(SPARSITY_FORMS)}, got {self.sparsity!r}")
        check(self.l0_coeff >= 0, "l0_coeff", f"must be >= 0, got {self.l0_coeff}")
        check(self.bandwidth > 0, "bandwidth", f"must be > 0, got {self.bandwidth}")
        if self.threshold_init is None:
            self.threshold_init = 1 / math.sqrt(self.d_in)
        check(self.threshold_init > 0, "threshold_init",
              f"must be > 0, got {self.threshold_init}")
        check(self.tanh_scale > 0, "tanh_scale", f"must be > 0, got {self.tanh_scale}")
        check(0 <= self.l0_warmup <= 1, "l0_warmup", f"must be in [0, 1], got {self.l0_warmup}")


def threshold_from_file(cfg: dict, state: dict[str, Tensor]) -> dict[str, Tensor]:
    """A file's threshold theta (renamed `log_threshold`) as log theta; theta itself is kept (as
    `exact_tensors["threshold"]`) where exp(log theta) cannot give it back bit for bit. SAELens
    computes ReLU(pre) * (pre > theta), saelab pre * (pre > theta): the same for theta >= 0, and
    a negative theta acts as 0 in SAELens' form."""
    theta = state["log_threshold"]
    state["log_threshold"] = log_exact(theta)
    return {} if torch.equal(state["log_threshold"].exp(), theta) else {"threshold": theta.clone()}


def threshold_to_file(dictionary: JumpReLU, tensors: dict[str, Tensor]) -> None:
    """theta = exp(log_threshold), except where it still equals what reading a file's threshold
    gave: there the threshold as that file stored it (exp does not reach every float)."""
    theta = dictionary.threshold.detach().cpu()
    exact = dictionary.exact_tensors.get("threshold")
    if exact is not None and exact.shape == theta.shape and exact.dtype == theta.dtype:
        theta = torch.where(theta == log_exact(exact).exp(), exact.cpu(), theta)
    tensors["threshold"] = theta


@register("jumprelu")
class JumpReLU(Dictionary):
    """JumpReLU SAE. Weights: W_enc [n_latents, d_in], b_enc [n_latents], log_threshold
    [n_latents] (theta = exp(log_threshold)), W_dec [n_latents, d_out], b_dec [d_out]."""

    Config = JumpReLUConfig
    scales_with_input = ("b_enc", "b_dec")  # theta too: see fold_input_scale
    formats = {"saelens": SaeLensMapping(architecture="jumprelu",
                                         tensors={**PLAIN, "threshold": "log_threshold"},
                                         read=threshold_from_file, write=threshold_to_file)}

    def __init__(self, cfg: JumpReLUConfig):
        super().__init__(cfg)
        self.init_tied_weights()
        self.log_threshold = nn.Parameter(torch.full((cfg.n_latents,),
                                                     math.log(cfg.threshold_init)))

    @property
    def unit_norm_decoder(self) -> bool:  # type: ignore[override]
        return self.cfg.sparsity == "step"

    @property
    def threshold(self) -> Tensor:
        """theta [n_latents], in input units."""
        return self.log_threshold.exp()

    def encode(self, x: Tensor) -> Tensor:
        return jumprelu(self.pre_activations(x), self.threshold)

    @torch.no_grad()
    def fold_input_scale(self, scale: float) -> None:
        super().fold_input_scale(scale)
        self.log_threshold.sub_(math.log(scale))  # theta / scale

    def _above(self, xc: Tensor) -> tuple[Above, Tensor]:
        """The pre-activations that matter to the loss: every entry above its threshold or
        within eps / 2 below it (the only ones with a gradient), as per-row lists padded with
        -inf (never active, never in a window), or the whole matrix while most entries are
        there (early in training; `encode_above`); and the thresholds shaped to match."""
        threshold = self.threshold
        floor = (threshold - self.cfg.bandwidth / 2).detach()  # [n_latents]
        above = encode_above(xc, self.W_enc, self.b_enc, floor, fill=float("-inf"))
        return above, above.at(threshold)

    def sparsity_penalty(self, pre: Tensor, codes: Tensor, threshold: Tensor,
                         indices: Tensor | None) -> Tensor:
        """Mean over rows of the sparsity term (before lambda), from listed pre-activations,
        codes and thresholds [B, m] and their latent indices (or the whole [B, n] matrices,
        `indices` None): the L0 through the step pseudo-derivative, or the tanh-smoothed L0
        weighted by decoder norms."""
        if self.cfg.sparsity == "step":
            return step_ste(pre, threshold, self.cfg.bandwidth).sum(-1).mean()
        norms = self.W_dec.norm(dim=1)
        weighted = codes.abs() * (norms if indices is None else norms[indices])
        return torch.tanh(self.cfg.tanh_scale * weighted).sum(-1).mean()

    def loss(self, x: Tensor, state: StepState, target: Tensor | None = None) -> Loss:
        target = x if target is None else target
        xc = self.centered(x)
        above, threshold = self._above(xc)  # [B, m] lists, or [B, n] whole
        pre, indices = above.values, above.indices
        codes = jumprelu_ste(pre, threshold, self.cfg.bandwidth)
        x_hat = decode_above(codes, above, self.W_dec) + self.b_dec
        mse = squared_error(x_hat, target).mean()
        sparsity = self.sparsity_penalty(pre, codes, threshold, indices)
        warm = self.cfg.l0_warmup * state.total_steps
        ramp = min(1.0, (state.step + 1) / warm) if warm > 0 else 1.0
        weight = ramp * self.cfg.l0_coeff
        terms = {"mse": mse, "sparsity": sparsity}
        total = add_auxk(terms, mse + weight * sparsity, self.cfg, state.dead_mask, xc, target,
                         x_hat, self.W_enc, self.b_enc, self.W_dec)
        fired = codes.detach() != 0
        active = fired_latents(fired, above, self.n_latents)
        metrics = {"fvu": fvu(x_hat.detach(), target).item(),
                   "l0": fired.sum(-1).float().mean().item(), "l0_weight": weight,
                   "threshold_mean": self.threshold.detach().mean().item()}
        return Loss(total, terms, metrics, active)
